"""Each image command declares its options once, in a parse-options table
(imgtool/parse-options.h), and both its parser and its --help come from
that table.  These tests hold the two to each other: every option --help
lists is one the parser takes, in every spelling it shows (io's command
language included), and the help stays within 80 columns.  They also
pin the order qemu-img checks a command line in: a wrong number of file
names is reported before --image-opts with -f.
"""
import re
import subprocess

import pytest

from conftest import IMGTOOL, imgtool, qemu_img

COMMANDS = ["amend", "bench", "bitmap", "check", "commit", "compare",
            "convert", "create", "dd", "info", "io", "map", "measure",
            "rebase", "resize", "snapshot"]

# What the parser says when it does not know an option or misses its
# argument (qemu-img's words; getopt's for io; the command language's).
REFUSED = re.compile(r"unrecognized option|missing argument for option|"
                     r"invalid option|requires an argument|unknown option|"
                     r"needs a value")


def option_names(help_text, indent=2):
    """The option spellings of the option lines at this indent, e.g.
    ["-r", "--repair=leaks|all"]: names start at the indent, the help at
    indent + 24 (or on the next line when the names are long)."""
    lines = help_text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.startswith(" " * indent + "-") or \
                line.startswith(" " * (indent + 1)):
            continue
        names = line[indent:indent + 23].rstrip()
        rest = line[indent + 23:]
        if len(line) > indent + 24 and rest[:1] == " " and \
                "  " not in names:
            out.append(names.split(", "))
        elif "  " not in line[indent:] and i + 1 < len(lines) and \
                lines[i + 1].startswith(" " * (indent + 24)):
            out.append(line[indent:].split(", "))
    return out


def spellings(names):
    """Command-line words for each spelling of one option, e.g.
    ["-t cache"] -> [["-t", "1"]], ["-f", "--format=fmt"] -> [["-f", "1"],
    ["--format=1"]], ["--random[=seed]"] -> [["--random"],
    ["--random=1"]]."""
    out = []
    # "-f, --format=fmt": the argument is shown with the long name only
    takes = any("=" in n or " " in n for n in names)
    for name in names:
        if name.startswith("--"):
            m = re.fullmatch(r"(--[a-z-]+)(\[?=[^\]]+\]?)?", name)
            assert m, name
            if m.group(2) is None:
                out.append([m.group(1)])
            elif m.group(2).startswith("["):
                out += [[m.group(1)], [m.group(1) + "=1"]]
            else:
                out.append([m.group(1) + "=1"])
        else:
            m = re.fullmatch(r"(-[A-Za-z])( \S+)?", name)
            assert m, name
            out.append([m.group(1), "1"] if takes and "[" not in
                       "".join(names) else [m.group(1)])
    return out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_fits_and_names_the_command(cmd):
    p = imgtool(cmd, "--help")
    assert p.stdout.startswith(f"usage: imgtool {cmd} ")
    assert p.stderr == ""
    for line in p.stdout.splitlines():
        assert len(line) <= 80, line
    assert imgtool(cmd, "-h").stdout == p.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_listed_option_is_taken(cmd, tmp):
    """Each spelling --help shows (short and long, with and without an
    optional value) passes the parser: whatever fails later (no file
    name is given), it is not reported as an unknown option or a missing
    value."""
    names = option_names(imgtool(cmd, "--help").stdout)
    assert len(names) >= 2, names
    tried = 0
    for spelled in names:
        for words in spellings(spelled):
            # nothing after it: an option shown without a value that
            # wanted one would miss it
            p = subprocess.run([IMGTOOL, cmd, *words], cwd=tmp,
                               capture_output=True, text=True, timeout=60)
            assert not REFUSED.search(p.stderr), (words, p.stderr)
            tried += 1
    assert tried >= len(names)
    # and the parser does refuse what no table lists
    p = imgtool(cmd, "--no-such-option", "nosuch.img", check=False)
    assert p.returncode == 1 and REFUSED.search(p.stderr), p.stderr


IO_ARGS = {"read": "0 512", "write": "0 512", "discard": "0 512",
           "truncate": "2M"}


def test_io_command_language_options_are_taken(tmp):
    """io --help lists its commands with their options, from the tables
    the command language is parsed with."""
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    text = imgtool("io", "--help").stdout
    commands = text.split("\ncommands:\n", 1)[1]
    listed = re.findall(r"^  ([a-z]+)", commands, re.M)
    assert listed == ["read", "write", "discard", "flush", "map", "length",
                      "truncate"]
    blocks = re.split(r"^  (?=[a-z])", commands, flags=re.M)
    tried = 0
    for block in blocks:
        name = block.split()[0] if block.strip() else None
        if name not in IO_ARGS:
            continue
        for spelled in option_names(block, indent=4):
            for words in spellings(spelled):
                line = " ".join([name, *words, IO_ARGS[name]])
                p = imgtool("io", "-c", line, img, check=False)
                assert not REFUSED.search(p.stderr), (line, p.stderr)
                tried += 1
        p = imgtool("io", "-c", f"{name} -Z {IO_ARGS[name]}", img, rc=1)
        assert p.stderr == f"imgtool: io: {name}: unknown option '-Z'\n"
    assert tried >= 10
    p = imgtool("io", "-c", "read -P", img, rc=1)
    assert p.stderr == "imgtool: io: read: -P needs a value\n"


# (arguments, the image names to add) where qemu-img 7.2 reports the
# number of names first, and --image-opts with -f only after.
ORDER = [
    (["commit"], 0), (["info"], 0), (["check"], 0), (["map"], 0),
    (["compare"], 0), (["compare"], 1), (["rebase", "-u"], 0),
    (["bitmap", "--add"], 1), (["resize"], 1), (["info"], 2),
]


@pytest.mark.parametrize("args,nimg", ORDER,
                         ids=[f"{a[0]}-{n}" for a, n in ORDER])
def test_file_count_is_checked_before_format_conflict(tmp, args, nimg):
    img = tmp / "a.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", img, "1M")
    argv = [*args, "--image-opts", "-f", "qcow2", *[img] * nimg]
    q = qemu_img(*argv, rc=1)
    p = imgtool(*argv, rc=1)
    want = q.stderr.splitlines()[0].replace("qemu-img: ", "imgtool: ", 1)
    assert p.stderr.splitlines()[0] == want
    assert "mutually exclusive" not in p.stderr
