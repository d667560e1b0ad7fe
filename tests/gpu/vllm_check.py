"""`make vllm-check`: every vLLM name and argument model/backends/vllm_llm.py uses exists in the installed
vLLM (run in the separate environment the Makefile builds, with vLLM 0.33).

Names come from ``VLLM_USES`` in the backend (tests/model/test_backends.py checks that the table covers every
vLLM call in that module). Arguments are checked with ``inspect.signature``; a callable taking ``**kwargs``
(``LLM(**kwargs)`` passes them to ``EngineArgs``) is checked against ``vllm.engine.arg_utils.EngineArgs``;
attributes of result classes against their dataclass / msgspec fields, ``__init__`` parameters and
annotations. Prints one line per name and exits 1 when anything is missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from typing import Any

import vllm

from model.backends.vllm_llm import VLLM_USES


def resolve(name: str) -> Any:
    """``LLM.generate`` -> vllm.LLM.generate; ``outputs.RequestOutput`` -> vllm.outputs.RequestOutput."""
    obj: Any = vllm
    for i, part in enumerate(name.split(".")):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            obj = importlib.import_module("vllm." + ".".join(name.split(".")[: i + 1]))
    return obj


def known_names(obj: Any) -> tuple[set[str], bool]:
    names: set[str] = set()
    var_kw = False
    try:
        params = inspect.signature(obj).parameters.values()
        names |= {p.name for p in params}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    except (TypeError, ValueError):
        pass
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            names |= {f.name for f in dataclasses.fields(obj)}
        names |= set(getattr(obj, "__struct_fields__", ()))
        for klass in obj.__mro__:
            names |= set(getattr(klass, "__annotations__", {}))
        names |= {n for n in dir(obj) if not n.startswith("_")}
    return names, var_kw


def main() -> int:
    from vllm.engine.arg_utils import EngineArgs

    engine_args, _ = known_names(EngineArgs)
    failures = 0
    print(f"vllm {vllm.__version__}")
    for name, args in VLLM_USES.items():
        try:
            obj = resolve(name)
        except (AttributeError, ImportError) as e:
            print(f"MISSING  vllm.{name}: {e}")
            failures += 1
            continue
        names, var_kw = known_names(obj)
        missing = [a for a in args if a not in names and not (var_kw and a in engine_args)]
        print(f"{'MISSING ' if missing else 'ok      '} vllm.{name}({', '.join(args)})"
              + (f": no {', '.join(missing)}" if missing else ""))
        failures += bool(missing)
    print("vllm-check: " + ("failed" if failures else "every name and argument found"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
