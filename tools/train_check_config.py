"""The resolved configuration of the loss-curve check's run, from `primus train ... --dry-run`.

tools/cpu_curve.sh stores it in the CPU curve's JSON; tools/gpu_train_check.sh resolves its own
run (same options, device cpu, the GPU machine's binary, configs/ and data paths) and compares:
every key both resolve must have the same value, except the host-specific paths (a key only one
binary knows is reported, not fatal: a newer schema). This catches what comparing command lines
cannot: a configs/ file or a schema default that differs between the two machines' checkouts or
binaries (seed, model shape, schedule, ...).

  python3 tools/train_check_config.py DRY_RUN_OUTPUT          prints the {key: value} JSON
"""
import json
import re
import sys

# Paths that name the same bytes differently on the two machines (the data and tokenizer are
# compared by sha256 instead) or only say where the metrics go.
HOST_KEYS = {"data_path", "tokenizer_model", "tensorboard_dir"}

# A table row of the dry run: "  key   value   source", the source being one of these forms.
_ROW = re.compile(r"^  ([a-z_][a-z0-9_]*)\s+(.*?)\s+(command line|schema default|derived \(.*\)|\S+:\d+)$")


def resolved(text):
    """{key: value} of every table row of a `primus train --dry-run` output, minus HOST_KEYS."""
    out = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m and m.group(1) not in HOST_KEYS:
            out[m.group(1)] = m.group(2)
    return out


def differences(a, b):
    """(changed, one_sided): lines for the keys whose values differ between two resolved configs,
    and for the keys only one of them has. A key only one side knows comes from a binary with a
    newer schema (its default rarely changes the run): reported, not fatal; a changed value is."""
    changed, one_sided = [], []
    for k in sorted(set(a) | set(b)):
        if k in a and k in b:
            if a[k] != b[k]:
                changed.append(f"{k}: {a[k]} (CPU curve) vs {b[k]} (here)")
        else:
            one_sided.append(f"{k} = {a[k] if k in a else b[k]} only {'in the CPU curve' if k in a else 'here'}")
    return changed, one_sided


if __name__ == "__main__":
    cfg = resolved(open(sys.argv[1]).read())
    if not cfg:
        sys.exit(f"{sys.argv[1]}: no configuration rows found (is it `primus train --dry-run` output?)")
    json.dump(cfg, sys.stdout, indent=1, sort_keys=True)
    print()
