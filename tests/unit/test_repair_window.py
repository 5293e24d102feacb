"""How a call steers its bitrate and FEC from what the peer asks for again and loses."""

from __future__ import annotations

from peerphone.media.stats import FEC_MAX_PCT, REPAIR_WINDOW, RepairWindow


def run(window: RepairWindow, seconds: int, lost_per_s: int, asked_per_s: int) -> None:
    sent, asked, lost = window._samples[-1] if window._samples else (0, 0, 0)
    for _ in range(seconds):
        sent, asked, lost = sent + 25, asked + asked_per_s, (lost or 0) + lost_per_s
        window.add(sent, asked, lost)


def test_nothing_is_known_before_two_samples_and_a_report() -> None:
    window = RepairWindow()
    assert window.asked_again_share() is None and window.fec_loss_pct() is None
    window.add(25, 0, None)
    window.add(50, 1, None)  # the peer has not reported yet
    assert window.asked_again_share() == 1 / 25
    assert window.residual_loss() is None and window.fec_loss_pct() is None


def test_loss_that_retransmission_repairs_needs_no_fec() -> None:
    window = RepairWindow()
    run(window, 12, lost_per_s=5, asked_per_s=5)  # 20 % lost, all asked for again
    assert window.asked_again_share() == 0.2
    assert window.residual_loss() == 0.0 and window.fec_loss_pct() == 0


def test_one_packet_in_a_second_does_not_switch_fec_on() -> None:
    """Per second, one report's loss without the NACK in the same second looked like 4 %."""
    window = RepairWindow()
    run(window, 5, lost_per_s=0, asked_per_s=0)
    window.add(150, 0, 1)  # a report counts a loss whose NACK falls in the next second
    assert window.residual_loss() == 1 / 125
    assert window.fec_loss_pct() == 0


def test_loss_nobody_asks_for_again_gets_fec_up_to_a_cap() -> None:
    window = RepairWindow()
    run(window, 12, lost_per_s=2, asked_per_s=0)  # 8 %: a peer that does not NACK
    assert window.fec_loss_pct() == 8
    run(window, 12, lost_per_s=6, asked_per_s=0)  # 24 %
    assert window.fec_loss_pct() == FEC_MAX_PCT


def test_the_window_forgets_after_its_size() -> None:
    window = RepairWindow()
    run(window, 12, lost_per_s=5, asked_per_s=0)
    assert window.fec_loss_pct() == FEC_MAX_PCT
    run(window, REPAIR_WINDOW, lost_per_s=0, asked_per_s=0)
    assert window.residual_loss() == 0.0 and window.asked_again_share() == 0.0
