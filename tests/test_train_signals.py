"""StopRequest: signals become a flag, handlers are restored, a second Ctrl-C interrupts at once."""

from __future__ import annotations

import os
import signal

import pytest

from lm.train.signals import StopRequest


def test_sigterm_sets_the_flag_and_handlers_are_restored_after_nested_use():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    with stop:
        with stop:  # run_experiment and the Trainer both hold it
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signal_name == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # still ours until the outer exit
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_second_sigint_raises_keyboard_interrupt():
    stop = StopRequest()
    with stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_on_signal_can_leave_at_once():
    class Leave(Exception):
        pass

    def leave(name):
        raise Leave(name)

    stop = StopRequest()
    stop.on_signal = leave
    with pytest.raises(Leave, match="SIGTERM"):
        with stop:
            os.kill(os.getpid(), signal.SIGTERM)
