"""`make conformance`, step 2 (in .venv-trainers: LLaMA-Factory 0.9.5 + ms-swift 4.6): every exported sample
of every job under OUT/jobs loaded through the trainer's own dataset loading, template encoding and collator,
with the settings its export states (llamafactory.yaml; export.json's ms-swift environment and flags), and
compared with the shard: input_ids, labels, image / video grids, second_per_grid_ts and the M-RoPE position
ids (the trainer's collator with the tiny model against formatters.rope on the shard's tokens). Prints one
table row per trainer and job; exits 1 when any exported sample differs.

    python tests/conformance/check_trainers.py OUT [JOB ...]
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# LLaMA-Factory 0.9.5 pins datasets<=4.0.0, while ms-swift 4.6.0 imports datasets.features.Json (datasets >= 4.7)
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
sys.path.insert(0, str(REPO))
from formatters.rope import mrope_position_ids  # noqa: E402  (numpy only: no vlcurate dependencies)

FIELDS = ("input_ids", "labels", "image_grid_thw", "video_grid_thw", "second_per_grid_ts", "position_ids")


def shard_samples(job: Path) -> dict[str, dict[str, Any]]:
    """key -> {input_ids, labels, grids, second_per_grid_ts, position_ids, builder} from the job's shards."""
    out: dict[str, dict[str, Any]] = {}
    for tar in sorted((job / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                key, _, suffix = m.name.partition(".")
                data = tf.extractfile(m).read()  # type: ignore[union-attr]
                s = out.setdefault(key, {})
                if suffix == "json":
                    s["meta"] = json.loads(data)["meta"]
                elif suffix in ("input_ids.npy", "labels.npy"):
                    s[suffix[:-4]] = np.load(io.BytesIO(data)).astype(int).tolist()
    for s in out.values():
        meta = s.pop("meta")
        s["image_grid_thw"] = meta.get("image_grid_thw") or []
        s["video_grid_thw"] = meta.get("video_grid_thw") or []
        s["second_per_grid_ts"] = meta.get("second_per_grid_ts") or []
        s["position_ids"] = mrope_position_ids(s["input_ids"], s["image_grid_thw"] or None,
                                               s["video_grid_thw"] or None, s["second_per_grid_ts"] or None).tolist()
    return out


def _plain(value: Any) -> Any:
    if value is None:
        return []
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def differences(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    bad = []
    for f in FIELDS:
        a, b = _plain(want.get(f)), _plain(got.get(f))
        if f == "position_ids" and len(b) == 4:  # transformers >= 4.53: the text positions, then t, h, w
            b = b[1:]
        if f == "second_per_grid_ts":
            same = len(a) == len(b) and np.allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-6)
        else:
            same = a == b
        if not same:
            bad.append(f)
    return bad


# ----------------------------------------------------------------------------------------------------------
# The trainers (each returns [(key, {field: value})] for the lines of its export, in order)


def _tiny_model(model_dir: str) -> Any:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir)


def run_llamafactory(export: Path, model_dir: str) -> list[tuple[str, dict[str, Any]]]:
    import yaml
    from llamafactory.data import (
        SFTDataCollatorWith4DAttentionMask,
        get_dataset,
        get_template_and_fix_tokenizer,
    )
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    settings = yaml.safe_load((export / "llamafactory.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # paths must resolve against dataset_dir, not the working directory
        args = {**settings, "dataset_dir": str(export), "stage": "sft", "do_train": True,
                "model_name_or_path": model_dir, "finetuning_type": "full", "output_dir": tmp,
                "overwrite_cache": True, "report_to": "none", "trust_remote_code": True}
        model_args, data_args, training_args, *_ = get_train_args(args)
        tok = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tok["tokenizer"], data_args)
        dataset = get_dataset(template, model_args, data_args, training_args, "sft", **tok)["train_dataset"]
        collator = SFTDataCollatorWith4DAttentionMask(template=template, model=_tiny_model(model_dir),
                                                      label_pad_token_id=-100, **tok)
        keys = (export / "data.ids").read_text().split()
        assert len(dataset) == len(keys), (len(dataset), len(keys))
        got = []
        for key, row in zip(keys, dataset, strict=True):
            batch = collator([row])
            got.append((key, {"input_ids": row["input_ids"], "labels": row["labels"],
                              "image_grid_thw": batch.get("image_grid_thw"),
                              "video_grid_thw": batch.get("video_grid_thw"),
                              "second_per_grid_ts": batch.get("second_per_grid_ts"),
                              "position_ids": batch["position_ids"][:, 0] if "position_ids" in batch else None}))
        return got


def run_swift(export: Path, model_dir: str) -> list[tuple[str, dict[str, Any]]]:
    """In a child process: ms-swift reads its settings from the environment when it is imported."""
    summary = json.loads((export / "export.json").read_text())
    env = {**os.environ, **summary["settings"]["env"]}
    got = []
    for name in summary["data"]:
        keys = (export / name.replace(".jsonl", ".ids")).read_text().split()
        if not keys:  # data.jsonl is listed even when every sample is a pretraining one (data_pt.jsonl)
            continue
        proc = subprocess.run([sys.executable, __file__, "--swift-child", str(export), name, model_dir],
                              env=env, cwd=export, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert len(rows) == len(keys), (len(rows), len(keys))
        got += list(zip(keys, rows, strict=True))
    return got


def swift_child(export: Path, name: str, model_dir: str) -> None:
    from swift import get_processor, get_template, load_dataset

    flags = json.loads((export / "export.json").read_text())["settings"]["flags"]
    pt = name == "data_pt.jsonl"
    processor = get_processor(model_dir)
    template = get_template(processor, template_type=flags["--template"], max_length=int(flags["--max_length"]),
                            norm_bbox=flags.get("--norm_bbox"), use_chat_template=not pt,
                            loss_scale="all" if pt else "default")
    template.set_mode("train")
    train, _ = load_dataset([name], split_dataset_ratio=0.0)
    for row in train:
        enc = template.encode(row)
        batch = template.data_collator([enc])
        pos = batch.get("position_ids")
        print(json.dumps({"input_ids": _plain(enc["input_ids"]), "labels": _plain(enc["labels"]),
                          "image_grid_thw": _plain(batch.get("image_grid_thw")),
                          "video_grid_thw": _plain(batch.get("video_grid_thw")),
                          "second_per_grid_ts": _plain(batch.get("second_per_grid_ts")),
                          "position_ids": _plain(pos[:, 0]) if pos is not None else None}), flush=True)


def main(out: str, only: list[str]) -> int:
    root = Path(out).resolve()
    model_dir = str(root / "model")
    failed = False
    print(f"{'trainer':<13}{'job':<22}{'exported':>9}{'identical':>10}  differing fields / skipped")
    for job in sorted((root / "jobs").iterdir()):
        if only and job.name not in only:
            continue
        shards = shard_samples(job)
        for trainer, run in (("llamafactory", run_llamafactory), ("swift", run_swift)):
            export = job / "exports" / trainer
            summary = json.loads((export / "export.json").read_text())
            skipped = summary["skipped"]
            if not summary["samples"]:
                print(f"{trainer:<13}{job.name:<22}{0:>9}{0:>10}  {skipped or ''}", flush=True)
                continue
            try:
                got = run(export, model_dir)
            except Exception as e:  # a trainer that cannot load an export is a failed row, not a crash
                failed = True
                print(f"{trainer:<13}{job.name:<22}{'-':>9}{'-':>10}  ERROR {type(e).__name__}: "
                      f"{str(e).splitlines()[-1] if str(e) else ''}"[:400], flush=True)
                continue
            diffs: dict[str, int] = {}
            same = 0
            for key, sample in got:
                bad = differences(shards[key], sample)
                same += not bad
                for f in bad:
                    diffs[f] = diffs.get(f, 0) + 1
            failed |= same != len(got)
            print(f"{trainer:<13}{job.name:<22}{len(got):>9}{same:>10}  {diffs or ''} {skipped or ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if sys.argv[1] == "--swift-child":
        swift_child(Path(sys.argv[2]), sys.argv[3], sys.argv[4])
        sys.exit(0)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
