"""The constants' __all__ is a static list (type checkers read it to know what
`from mmemu import *` and `mmemu.PAGE_SIZE` are); it must name every
constant, or a name works at run time and mypy reports it missing."""
import mmemu
from mmemu import constants


def test_constants_all_names_every_constant():
    public = [k for k in vars(constants) if k.isupper() and not k.startswith("_")]
    assert sorted(constants.__all__) == sorted(public) and len(set(constants.__all__)) == len(public)


def test_package_exports_every_constant():
    assert set(constants.__all__) <= set(mmemu.__all__)
    for name in constants.__all__:
        assert getattr(mmemu, name) == getattr(constants, name)
