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


def test_a_signal_whose_exception_was_swallowed_still_ends_the_run(capsys):
    """Python drops an exception raised by a signal handler inside some of its own callbacks (an import's
    module-lock cleanup): the run would finish with exit 0. The handler remembers the signal, so the run's next
    checkpoint (or main's return) ends it with the interrupted line and 128 + the signal."""
    import os
    import signal

    from mlperf_llama2.errors import raise_if_interrupted

    reached = []

    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.getsignal(signal.SIGTERM)  # the handler runs here, between bytecodes
        except KeyboardInterrupt:
            pass  # what "Exception ignored" amounts to: the exception never reaches the caller
        reached.append("after the signal")
        raise_if_interrupted()
        reached.append("past the checkpoint")

    before = signal.getsignal(signal.SIGTERM)
    assert run_cli(main, []) == 128 + signal.SIGTERM
    assert reached == ["after the signal"]
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # run_cli put the caller's handler back


def test_a_swallowed_signal_is_not_exit_0_even_without_a_checkpoint(capsys):
    import os
    import signal

    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            signal.getsignal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return 0

    assert run_cli(main, []) == 128 + signal.SIGINT
    assert "interrupted by SIGINT" in capsys.readouterr().err
