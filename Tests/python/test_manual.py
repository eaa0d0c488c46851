"""The man pages `make man` generates from the command definitions (swift-argument-parser's
generate-manual plugin) render with man(1) without warnings and hold every subcommand, with its
abstract, as `--experimental-dump-help` (the same definitions) lists them; the completion scripts
the programs print load in bash, zsh and fish (where the shell is installed) and complete a
subcommand.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAN = ROOT / ".build" / "plugins" / "GenerateManual" / "outputs"
PROGRAMS = {"keyhold": "keyhold", "keyhold-server": "keyhold-server", "keyhold-agent": "keyhold-agent"}


def commands(binary):
    """(path, abstract) for the command and every subcommand below it."""
    tree = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout)

    def walk(command, path):
        yield path, command.get("abstract", "")
        for sub in command.get("subcommands", []):
            if sub["commandName"] == "help":
                continue
            yield from walk(sub, path + [sub["commandName"]])

    return list(walk(tree["command"], [tree["command"]["commandName"]]))


def page(program):
    pages = list(MAN.glob(f"*/{program}.1"))
    if not pages:
        pytest.fail(f"no man page for {program} under {MAN}: run 'make man' (make test does)")
    return pages[0]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_man_page_renders_every_subcommand(program, keyhold_bin):
    binary = os.path.join(os.path.dirname(keyhold_bin), program)
    env = dict(os.environ, MANWIDTH="200", MAN_KEEP_FORMATTING="0", LC_ALL="C.UTF-8")
    # groff's own warnings (-ww) on the page as man renders it.
    check = subprocess.run(["groff", "-mandoc", "-ww", "-z", "-Tutf8", str(page(program))], capture_output=True, text=True)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    text = subprocess.run(["man", "-l", str(page(program))], check=True, capture_output=True, text=True, env=env).stdout
    flat = " ".join(re.sub(".\b", "", text).split())  # without the overstrikes of bold and underline
    listed = commands(binary)
    assert len(listed) > 1
    assert flat.startswith(f"{program.upper()}(1)"), flat[:80]
    for path, abstract in listed[1:]:
        # Each subcommand is an item: its name, then its abstract (nested under its parent's item).
        item = f"{path[-1]} {' '.join(abstract.split())[:40]}"
        assert item in flat, f"man {program} lacks '{' '.join(path)}' with its abstract ({item!r})"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_script_loads_and_completes_a_subcommand(shell, keyhold_bin, tmp_path):
    """After `keyhold file `, the completions are file's subcommands, not the top level's."""
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is missing (scripts/install-deps.sh test installs it)")
    script = subprocess.run([keyhold_bin, "--generate-completion-script", shell], check=True, capture_output=True, text=True).stdout
    path = tmp_path / f"keyhold.{shell}"
    path.write_text(script)
    env = dict(os.environ, PATH=os.path.dirname(keyhold_bin) + ":" + os.environ["PATH"])
    if shell == "bash":
        probe = f"source {path}; COMP_WORDS=(keyhold file ''); COMP_CWORD=2; COMP_LINE='keyhold file '; COMP_POINT=13; _keyhold; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        words = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env).stdout.split()
    elif shell == "fish":
        out = subprocess.run(["fish", "-c", f"source {path}; complete -C 'keyhold file '"], capture_output=True, text=True, env=env).stdout
        words = [line.split("\t")[0] for line in out.splitlines()]
    else:
        # zsh completes only inside its line editor: check the script parses and names file's subcommands.
        out = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        words = [w for w in ("encrypt", "decrypt", "rekey", "info") if f"'{w}:" in script]
    assert {"encrypt", "decrypt", "rekey", "info"} <= set(words), words
    assert "enroll" not in words, words


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_command_that_runs_shows_an_example(program, keyhold_bin):
    """Every subcommand that does something (no subcommands of its own) has an example in its help."""
    binary = os.path.join(os.path.dirname(keyhold_bin), program)
    tree = json.loads(subprocess.run([binary, "--experimental-dump-help"], check=True, capture_output=True, text=True).stdout)
    missing = []

    def walk(command, path):
        subs = [s for s in command.get("subcommands", []) if s["commandName"] != "help"]
        if not subs and "Example" not in (command.get("discussion") or ""):
            missing.append(" ".join(path))
        for sub in subs:
            walk(sub, path + [sub["commandName"]])

    walk(tree["command"], [tree["command"]["commandName"]])
    assert missing == [], f"no example in the help of: {missing}"
    if program == "keyhold":
        # The file commands' examples use the agent; --key-file appears only as the offline alternative.
        for name in ("encrypt", "decrypt"):
            help_text = subprocess.run([binary, "file", name, "--help"], capture_output=True, text=True).stdout
            first = next(line for line in help_text.splitlines() if line.strip().startswith(f"keyhold file {name}"))
            assert "--key-file" not in first, first
