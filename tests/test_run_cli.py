"""errors.run_cli: a UserError is one line on stderr and exit 2, even when its text comes from a library that
wrote several lines (pickle's and pyarrow's messages do)."""

from __future__ import annotations

from mlperf_llama2.errors import EXIT_USER_ERROR, UserError, one_line, run_cli


def test_a_multi_line_user_error_is_printed_on_one_line(capsys):
    def main(argv):
        raise UserError("dataset is not readable: x.pkl (UnpicklingError: A load persistent id instruction was "
                        "encountered,\n  but no persistent_load function was specified.)")

    assert run_cli(main, []) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("was specified.)\n"), err
    assert "encountered, but no persistent_load" in err


def test_one_line_keeps_a_single_line_as_it_is():
    assert one_line("a  b: c") == "a  b: c"
    assert one_line("first\n\n  second \n") == "first second"
