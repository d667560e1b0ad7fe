"""`make conformance`, step 1 (the project's .venv): small jobs on the shared dev data, exported for
LLaMA-Factory, ms-swift and hf, plus the tiny Qwen2.5-VL model directory (real tokenizer and processor) whose
tokenizer the jobs use. Step 2 is check_trainers.py in .venv-trainers.

    python tests/conformance/build_jobs.py OUT
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEV = Path(os.environ.get("VLCURATE_DEV_DATA", REPO.parent / "shared" / "data" / "dev"))
EXPORTS = "output.exports=[llamafactory,swift,hf]"

# name -> (recipe, input path, --set overrides)
JOBS: dict[str, tuple[str, str, list[str]]] = {
    "caption_sft": ("flickr30k.yaml", str(DEV / "formats/flickr30k"), []),
    "caption_pretrain": ("flickr30k.yaml", str(DEV / "formats/flickr30k"), ["format.builder=caption_pretrain"]),
    "grounding_qwen2.5-vl": ("grounding.yaml", str(DEV / "grounding_coco/instances.json"), []),
    "grounding_qwen2-vl": ("grounding.yaml", str(DEV / "grounding_coco/instances.json"),
                           ["format.dialect=qwen2-vl"]),
    "ocr": ("ocr.yaml", str(DEV / "ocr_icdar2015"), ["format.options={tasks: [read, locate, recognize], "
                                                      "max_per_task: 3}"]),
    "vqa": ("vqa.yaml", str(DEV / "qa/vqav2/questions.json"), []),
    "video": ("video.yaml", "{out}/video/captions.jsonl", []),
}


def main(out: str) -> int:
    if not DEV.is_dir():
        print(f"conformance: the shared dev data is not at {DEV} (set VLCURATE_DEV_DATA)", file=sys.stderr)
        return 2
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "video").mkdir(exist_ok=True)  # a jsonl's videos must lie under its folder
    shutil.copy(DEV / "video/sintel_5s.mp4", root / "video")
    (root / "video/captions.jsonl").write_text(json.dumps(
        {"video": "sintel_5s.mp4", "caption": "A short clip from Sintel."}) + "\n")
    py = sys.executable
    subprocess.run([py, "-m", "jobs.cli", "make-tiny-model", str(root / "model")], cwd=REPO, check=True)
    for name, (recipe, path, sets) in JOBS.items():
        cmd = [py, "-m", "jobs.cli", "run", str(REPO / "jobs/recipes" / recipe), "-o", str(root / "jobs" / name),
               "--input", path.format(out=root), "--num-cpus", "2", "--set", EXPORTS]
        for s in sets:
            cmd += ["--set", s]
        print(f"[conformance] job {name}", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
