"""Bash completion (completions/imgtool.bash) driven through bash's own
completion machinery: bash-completion's library and our function, with
COMP_WORDS split the way readline splits a line ('=' and ':' are word
breaks), the candidates read back from COMPREPLY.

What completes is checked against what the binary says elsewhere: the
commands of `imgtool --help`, each command's options as its --help lists
them, the -o keys of `create -o help`, wipe algorithms of vol-wipe's
help, the pools and volumes the pool commands report.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import IMGTOOL, ROOT, Serve, imgtool

BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"
SCRIPT = os.path.join(ROOT, "completions", "imgtool.bash")

pytestmark = pytest.mark.skipif(not os.path.exists(BASH_COMPLETION),
                                reason="bash-completion not installed")

# COMP_WORDS as readline makes them: whitespace separates words, and each
# run of word-break characters (here '=' and ':') is a word of its own.
HARNESS = r'''
source "$1"
source "$2"
line=$3
COMP_LINE=$line
COMP_POINT=${#line}
COMP_WORDS=()
word=
for ((i = 0; i < ${#line}; i++)); do
    ch=${line:i:1}
    if [[ $ch == " " ]]; then
        [[ -n $word ]] && COMP_WORDS+=("$word")
        word=
    elif [[ $ch == [=:] ]]; then
        [[ -n $word && $word != [=:]* ]] && { COMP_WORDS+=("$word"); word=; }
        word+=$ch
    else
        [[ $word == [=:]* ]] && { COMP_WORDS+=("$word"); word=; }
        word+=$ch
    fi
done
COMP_WORDS+=("$word")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMPREPLY=()
_imgtool imgtool "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
for c in "${COMPREPLY[@]}"; do printf '%s\n' "$c"; done
'''


def complete(line, cwd=None, env=None):
    """The candidates bash offers at the end of line."""
    e = dict(env or os.environ)
    # the script runs "${words[0]}", i.e. imgtool from PATH
    e["PATH"] = os.path.dirname(os.path.abspath(IMGTOOL)) + ":" + e["PATH"]
    p = subprocess.run(["bash", "-c", HARNESS, "harness", BASH_COMPLETION,
                        SCRIPT, line], capture_output=True, text=True,
                       cwd=cwd, env=e, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def help_commands():
    out = imgtool("--help").stdout
    return re.findall(r"^  ([a-z][a-z0-9-]*) ", out, re.M)


def help_options(cmd):
    """The option names in the left column of `imgtool CMD --help`."""
    names = set()
    for line in imgtool(cmd, "--help").stdout.splitlines():
        if line == "commands:":
            break       # a command language's own (imgtool io)
        m = re.match(r"^\s+(\[?-.*?)(\s{2,}|$)", line)
        if not m:
            continue
        col = m.group(1)
        names |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", col))
        names |= set(re.findall(r"(?<![\w-])(-[a-zA-Z])(?![\w-])", col))
    return names


@pytest.fixture(scope="module", autouse=True)
def _imgtool_on_path():
    assert shutil.which("bash")


def test_commands_complete_from_the_command_table():
    cmds = help_commands()
    assert "create" in cmds and "pool-list" in cmds and "serve" in cmds
    got = complete("imgtool ")
    assert set(cmds) <= set(got)
    assert {"help", "--help", "--version"} <= set(got)
    pools = complete("imgtool pool-")
    assert pools and all(c.startswith("pool-") for c in pools)
    assert set(pools) == {c for c in cmds if c.startswith("pool-")}
    # help takes a command name
    assert set(complete("imgtool help vol-")) == \
        {c for c in cmds if c.startswith("vol-")}


def test_every_commands_options_match_its_help():
    """Each command's options come from its table: what --help lists is
    what completes (both parsers: qemu-img style and virsh style)."""
    checked = 0
    for cmd in help_commands():
        want = help_options(cmd)
        if not want:
            continue        # a command without an option table
        got = set(complete(f"imgtool {cmd} -"))
        assert want <= got | {"-h"}, (cmd, want - got)
        assert {g for g in got if g.startswith("--")} <= want | {"--help"}, \
            (cmd, got - want)
        checked += 1
    assert checked >= 40


def test_formats_and_fixed_value_sets():
    assert set(complete("imgtool create -f ")) >= {"qcow2", "raw", "luks"}
    assert complete("imgtool create -f qc") == ["qcow2"]
    assert complete("imgtool convert -O r") == ["raw"]
    assert set(complete("imgtool convert -t ")) == {
        "none", "writeback", "unsafe", "directsync", "writethrough"}
    # --opt=value: readline keeps "--output=", the candidates are values
    assert set(complete("imgtool info --output=")) == {"human", "json"}
    assert complete("imgtool info --output=j") == ["json"]
    assert set(complete("imgtool resize --preallocation=")) == {
        "off", "metadata", "falloc", "full"}
    assert set(complete("imgtool check -r ")) == {"leaks", "all"}


def test_create_option_keys_of_the_chosen_format():
    # named file: the protocol's options (nocow...) are listed too
    lines = imgtool("create", "-f", "qcow2", "-o", "help", "x.qcow2").stdout
    keys = set(re.findall(r"^\s+([a-z0-9_.-]+)=", lines, re.M))
    assert {"cluster_size", "compat", "lazy_refcounts"} <= keys
    got = complete("imgtool create -f qcow2 -o ")
    assert {g[:-1] for g in got if g.endswith("=")} == keys
    # the next key after a comma (readline keeps "compat="), and a
    # boolean key's values
    assert complete("imgtool create -f qcow2 -o compat=1.1,la") == [
        "1.1,lazy_refcounts="]
    assert set(complete("imgtool create -f qcow2 -o compat=1.1,"
                        "lazy_refcounts=")) == {"on", "off"}
    # convert: the keys of the output format, not the input's
    raw_keys = {g for g in complete("imgtool convert -f qcow2 -O raw -o ")
                if g.endswith("=")}
    assert "cluster_size=" not in raw_keys


def test_key_lists_from_the_argument_name():
    # run --disk name[,bus=blk|scsi][,format=fmt][,readonly=on]...
    assert set(complete("imgtool run --disk a.img,bus=")) == {"blk", "scsi"}
    assert "qcow2" in complete("imgtool run --disk a.img,format=")
    keys = set(complete("imgtool run --disk a.img,"))
    assert {"a.img,bus=", "a.img,format=", "a.img,readonly="} <= keys


def test_wipe_algorithms():
    text = imgtool("vol-wipe", "--help").stdout.replace("\n", " ")
    listed = re.search(r"algorithm: (.*?)\s{2,}", text + "  ").group(1)
    algs = {a.strip() for a in listed.split(",")}
    assert "gutmann" in algs
    assert set(complete("imgtool vol-wipe --algorithm ")) == algs


def test_files(tmp):
    (tmp / "disk.qcow2").write_bytes(b"")
    (tmp / "sub").mkdir()
    got = complete("imgtool info di", cwd=tmp)
    assert got == ["disk.qcow2"]
    assert "sub" in complete("imgtool info su", cwd=tmp)
    # a file-valued option written --opt=VALUE
    assert complete("imgtool run --kernel=di", cwd=tmp) == ["disk.qcow2"]


@pytest.fixture
def pools(tmp):
    env = dict(os.environ, IMGTOOL_CONFIG_DIR=str(tmp / "store"))
    for name in ("alpha", "beta"):
        (tmp / name).mkdir()
        imgtool("pool-define-as", name, "dir", "--target", tmp / name,
                env=env)
        imgtool("pool-start", name, env=env)
    imgtool("vol-create-as", "alpha", "one.qcow2", "1M", "--format",
            "qcow2", env=env)
    imgtool("vol-create-as", "alpha", "two.raw", "1M", env=env)
    return env


def test_pools_and_volumes(tmp, pools):
    env = pools
    assert set(complete("imgtool pool-info ", env=env)) == {"alpha", "beta"}
    assert complete("imgtool pool-start b", env=env) == ["beta"]
    assert set(complete("imgtool vol-info --pool alpha ", env=env)) == {
        "one.qcow2", "two.raw"}
    assert set(complete("imgtool vol-delete one.qcow2 ", env=env)) == {
        "alpha", "beta"}
    # vol:POOL/NAME wherever an image goes
    # (readline keeps "vol:"; the rest is what bash inserts)
    assert set(complete("imgtool info vol:", env=env)) == {"alpha/", "beta/"}
    assert {"vol:alpha/", "vol:beta/"} <= set(
        complete("imgtool info v", env=env))
    got = complete("imgtool info vol:alpha/", env=env)
    assert set(got) == {"alpha/one.qcow2", "alpha/two.raw"}
    assert complete("imgtool info vol:alpha/o", env=env) == [
        "alpha/one.qcow2"]


def test_volumes_without_a_pool_complete_by_path_and_key(tmp, pools):
    """Without --pool a vol-* command finds a volume by key or path in an
    active pool (virsh's lookup): those complete, and each one offered is
    one the command accepts; a bare name, which it would refuse, is not
    offered, nor a volume of an inactive pool."""
    env = pools
    imgtool("vol-create-as", "beta", "three.raw", "1M", env=env)
    imgtool("pool-destroy", "beta", env=env)
    one, two = str(tmp / "alpha" / "one.qcow2"), str(tmp / "alpha" / "two.raw")
    for cmd in ("vol-info", "vol-path", "vol-delete", "vol-wipe",
                "vol-resize", "vol-download", "vol-clone"):
        assert set(complete(f"imgtool {cmd} ", env=env)) == {one, two}, cmd
    assert complete(f"imgtool vol-info {tmp}/alpha/o", env=env) == [one]
    for cand in (one, two):
        assert imgtool("vol-path", cand, env=env).stdout.strip() == cand
    # a name alone is refused without the pool
    imgtool("vol-path", "one.qcow2", env=env, check=False, rc=1)
    # with the pool: its names (the positional pool comes after the vol)
    assert set(complete("imgtool vol-info --pool alpha ", env=env)) == {
        "one.qcow2", "two.raw"}
    # vol-create-from: the source volume is --inputpool's, not POOL's
    assert set(complete("imgtool vol-create-from beta x.xml --inputpool "
                        "alpha ", env=env)) == {"one.qcow2", "two.raw"}
    assert set(complete("imgtool vol-create-from beta x.xml ",
                        env=env)) == {one, two}


def test_serve_ctl_options_and_commands(tmp):
    """serve-ctl's option table and its commands, the daemon's own."""
    assert set(complete("imgtool serve-ctl -")) == {"-h", "--help"}
    assert set(complete("imgtool serve-ctl --")) == {"--help"}
    help_text = imgtool("serve-ctl", "--help").stdout
    listed = help_text.split("\ncommands:\n", 1)[1].split()
    assert "block-export-add" in listed and "quit" in listed
    # the commands are the daemon's (query-commands, less the
    # capabilities handshake serve-ctl does itself)
    q = tmp / "q.sock"
    with Serve(tmp, "--chardev", f"socket,id=m0,path={q},server=on,"
               "wait=off", "--monitor", "chardev=m0"):
        names = [c["name"] for c in json.loads(
            imgtool("serve-ctl", q, "query-commands").stdout)]
    assert sorted(listed) == sorted(n for n in names
                                    if n != "qmp_capabilities")
    # SOCKET is a file; COMMAND one of those; then the command's own
    # arguments (JSON or key=value), where options have ended
    (tmp / "ctl.sock").write_bytes(b"")
    assert complete("imgtool serve-ctl ct", cwd=tmp) == ["ctl.sock"]
    assert set(complete("imgtool serve-ctl ctl.sock ")) == set(listed)
    assert complete("imgtool serve-ctl ctl.sock block-export-") == [
        "block-export-add", "block-export-del"]
    assert complete("imgtool serve-ctl ctl.sock quer") == [
        "query-block-exports", "query-named-block-nodes",
        "query-block-jobs", "query-version", "query-commands"]
    assert complete("imgtool serve-ctl ctl.sock quit ") == []
    assert complete("imgtool serve-ctl ctl.sock quit -") == []


def test_complete_protocol_errors():
    p = imgtool("--complete", check=False)
    assert p.returncode == 1 and p.stderr.startswith("imgtool: ")
    p = imgtool("--complete", "x", "imgtool", check=False)
    assert p.returncode == 1 and "not a word index" in p.stderr
    # an unknown command completes nothing, quietly
    assert imgtool("--complete", "2", "imgtool", "nosuch", "").stdout == ""
