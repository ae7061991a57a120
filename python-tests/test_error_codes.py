"""The com_err table "o2dl": values, texts, the exported table object, and
registration with the system's libcom_err."""

import ctypes
import os
import re

import pytest

from o2dlm_ctypes import ERROR_CODES, ERROR_TABLE_BASE, E, ErrorTable, EtNode


def table(api):
    return ErrorTable.in_dll(api.lib, "et_o2dl_error_table")


def nodes_for(head, table_addr):
    """How many nodes of a com_err list point at the table."""
    n = 0
    node = head
    while node:
        if node.contents.table == table_addr:
            n += 1
        node = node.contents.next
    return n


def global_list(api):
    return ctypes.POINTER(EtNode).in_dll(api.com_err, "_et_list")


def test_base_is_the_one_compile_et_derives_from_o2dl():
    # libo2dlm-abi.md §4.1: fold "o2dl" over the 6-bit charset, shift by 8,
    # wrap to a signed 32-bit value.
    charset = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
    n = 0
    for c in "o2dl":
        n = n * 64 + charset.index(c) + 1
    base = n << 8
    if base >= 1 << 31:
        base -= 1 << 32
    assert base == ERROR_TABLE_BASE == -1485330944
    assert len(ERROR_CODES) == 32


def test_exported_table_object(o2dlm):
    t = table(o2dlm)
    assert t.base == ERROR_TABLE_BASE
    assert t.n_msgs == 32
    assert t.msgs[32] is None, "message array must be NULL-terminated"


@pytest.mark.parametrize("index", range(32), ids=[n for n, _ in ERROR_CODES])
def test_error_code(o2dlm, index):
    """Code = base + index; the exported table and error_message() (after
    initialize_o2dl_error_table) give the ocfs2-tools text."""
    name, message = ERROR_CODES[index]
    code = getattr(E, name)
    assert code == ERROR_TABLE_BASE + index
    assert table(o2dlm).msgs[index].decode() == message
    o2dlm.init_error_table()
    assert o2dlm.error_message(code) == message
    assert code & 0xFF == index


def test_codes_in_installed_header(o2dlm_lib_path):
    """Our installed o2dlm_err.h defines all 32 codes with these values."""
    header = os.path.join(os.path.dirname(os.path.dirname(o2dlm_lib_path)),
                          "include", "o2dlm", "o2dlm_err.h")
    if not os.path.isfile(header):
        pytest.fail(f"{header} not found next to the library under test")
    text = open(header).read()
    found = {m.group(1): int(m.group(2))
             for m in re.finditer(r"#define\s+O2DLM_ET_(\w+)\s+\((-?\d+)L\)", text)}
    assert found == {n: ERROR_TABLE_BASE + i for i, (n, _) in enumerate(ERROR_CODES)}
    assert re.search(r"#define\s+ERROR_TABLE_BASE_o2dl\s+\(-1485330944L\)", text)


def test_beyond_the_table_is_unknown(o2dlm):
    o2dlm.init_error_table()
    assert o2dlm.error_message(ERROR_TABLE_BASE + 32) == "Unknown code o2dl 32"
    assert o2dlm.error_message(ERROR_TABLE_BASE + 255) == "Unknown code o2dl 255"


def test_initialize_registers_once(o2dlm):
    addr = ctypes.addressof(table(o2dlm))
    o2dlm.init_error_table()
    o2dlm.init_error_table()
    o2dlm.init_error_table()
    assert nodes_for(global_list(o2dlm), addr) == 1


def test_initialize_r_fills_a_private_list_once(o2dlm):
    addr = ctypes.addressof(table(o2dlm))
    head = ctypes.POINTER(EtNode)()
    o2dlm.lib.initialize_o2dl_error_table_r(ctypes.addressof(head))
    o2dlm.lib.initialize_o2dl_error_table_r(ctypes.addressof(head))
    assert nodes_for(head, addr) == 1
    for index, (name, message) in enumerate(ERROR_CODES):
        got = o2dlm.com_err.com_right(ctypes.cast(head, ctypes.c_void_p), getattr(E, name))
        assert got is not None and got.decode() == message


def test_before_initialize_texts_are_unknown(o2dlm_remote):
    """A fresh process that never registered the table gets com_err's
    "Unknown code" text: loading the library registers nothing by itself."""
    r = o2dlm_remote()
    assert r.error_message(E.LOCKING) == "Unknown code o2dl 22"
    r.init_error_table()
    assert r.error_message(E.LOCKING) == "Could not take lock"


def test_com_err_prints_our_text(o2dlm, capfd):
    o2dlm.init_error_table()
    com_err = o2dlm.com_err.com_err
    com_err.restype = None
    com_err.argtypes = [ctypes.c_char_p, ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p]
    com_err(b"pytest", E.TRYLOCK_FAILED, b"on %s", b"lockA")
    err = capfd.readouterr().err
    assert "pytest: Trylock failed on lockA" in err
