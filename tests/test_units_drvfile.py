"""drvfile.py edge cases found by the property tests (see test_prop_formats.py)."""

from __future__ import annotations

import pytest

from qwexstore.drvfile import parse_drv_text
from qwexstore.errors import DrvFileError
from qwexstore.globs import Selector


@pytest.mark.parametrize("pattern", ["[z-a]", "[]", "a[!]", "[[:alpha:]]", "x/[a--b]"])
def test_bad_glob_class_is_a_drvfileerror(pattern: str) -> None:
    text = f'command = "x"\n[source]\ninclude = ["{pattern}"]\n'
    with pytest.raises(DrvFileError) as ei:
        parse_drv_text(text, "f.drv")
    assert ei.value.field == "source.include[0]"


@pytest.mark.parametrize("pattern", ["[z-a]", "[]", "a[!]"])
def test_selector_bad_class_is_a_valueerror(pattern: str) -> None:
    with pytest.raises(ValueError):
        Selector([pattern], [])


def test_duplicate_input_destination_is_refused() -> None:
    text = 'command = "x"\n[inputs]\n"a" = "file:one"\n"a/" = "file:two"\n'
    with pytest.raises(DrvFileError) as ei:
        parse_drv_text(text, "f.drv")
    assert ei.value.field is not None and ei.value.field.startswith("inputs")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('command = ""', "command"),
        ("command = []", "command"),
        ('command = ["", "x"]', "command"),
        ('command = "x"\noutputs = ["../o"]', "outputs[0]"),
        ('command = "x"\noutputs = ["/o"]', "outputs[0]"),
        ('command = "x"\n[env]\nvars = {QWEX_X = "1"}', "env.vars.QWEX_X"),
        ('command = "x"\n[env]\nvars = {"1A" = "1"}', "env.vars['1A']"),
        ('command = "x"\n[env]\nvars = {A = "1"}\npass = ["A"]', "env.vars.A"),
        ('command = "x"\n[inputs]\n"../a" = "file:x"', "inputs.'../a'"),
        ('command = "x"\n[inputs]\n"a" = "http:x"', "inputs.'a'"),
        ('command = "x"\n[inputs]\n"a" = "file:"', "inputs.'a'"),
        ('command = "x"\n[inputs]\n"a" = "file:x"\n"a/b" = "file:y"', "inputs"),
        ('command = "x"\n[[layers]]\nkind = "nope"', "layers[0].kind"),
        ('command = "x"\n[[layers]]\nhost = "h"', "layers[0]"),
        ('command = "x"\n[[layers]]\nkind = "ssh"\nhost = "h"\nbogus = 1', "layers[0].bogus"),
        ('command = "x"\nbogus = 1', "bogus"),
        ('command = "x"\n[source]\ninclude = ["../x"]', "source.include[0]"),
    ],
)
def test_errors_name_the_field(text: str, field: str) -> None:
    with pytest.raises(DrvFileError) as ei:
        parse_drv_text(text, "f.drv")
    assert ei.value.field == field
    assert ei.value.file == "f.drv"
    assert str(ei.value).startswith(f"f.drv: {field}: ")


def test_malformed_toml_names_the_file() -> None:
    with pytest.raises(DrvFileError) as ei:
        parse_drv_text("command = ", "f.drv")
    assert ei.value.field is None
    assert "malformed TOML" in str(ei.value)


def test_defaults_and_argv() -> None:
    d = parse_drv_text('command = "python train.py"', "f.drv")
    assert d.argv == ["sh", "-c", "python train.py"]
    assert d.outputs == ["out/"]
    assert d.source.rev == "HEAD"
    assert d.inputs == {} and d.layers == []
    d2 = parse_drv_text('command = ["python", "train.py"]', "f.drv")
    assert d2.argv == ["python", "train.py"]
