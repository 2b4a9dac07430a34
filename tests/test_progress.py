"""The experiment progress log and its ETA, on made-up stage costs and a fake clock."""

import pytest

from lbgap_tf.experiments import common, progress


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _tracker(work, capped=()):
    clock, lines = FakeClock(), []
    tracker = progress.StageProgress("gap", 6, work, capped, clock=clock,
                                     log=lambda fmt, *args: lines.append(fmt % args))
    return tracker, clock, lines


def test_the_estimate_is_units_left_times_the_measured_cost_of_their_kind():
    costs = progress.CostModel()
    costs.add_timed("SB epoch", 50, 100.0)  # 2 s per SB epoch...
    costs.add_timed("SB epoch", 50, 120.0)  # ...and 2.4 s in a second run: 2.2 s on average.
    costs.add_timed("LB epoch", 100, 150.0)
    costs.add_timed("full-space lbfgsb measurement", 2, 60.0)
    estimate = costs.estimate({"SB epoch": 50, "LB epoch": 100,
                               "full-space lbfgsb measurement": 4, "pair": 0})
    assert estimate.seconds == pytest.approx(50 * 2.2 + 100 * 1.5 + 4 * 30.0)
    assert estimate.untimed == {} and not estimate.upper_bound
    assert estimate.describe() == "ETA 6.3 min"


def test_kinds_without_a_cost_are_named_not_guessed():
    costs = progress.CostModel()
    costs.add_timed("SB epoch", 10, 30.0)
    estimate = costs.estimate({"SB epoch": 20, "LB epoch": 100, "pair": 1})
    assert estimate.seconds == pytest.approx(60.0)
    assert estimate.untimed == {"LB epoch": 100, "pair": 1}
    assert estimate.describe() == "ETA 1.0 min + not yet timed: 100 LB epochs, 1 pair"
    nothing = progress.CostModel().estimate({"SB epoch": 3})
    assert nothing.describe() == "ETA unknown: not yet timed: 3 SB epochs"


def test_a_cost_timed_here_beats_one_recorded_by_an_earlier_process():
    costs = progress.CostModel()
    costs.add_recorded("SB epoch", 10, 10.0)
    assert costs.cost("SB epoch") == pytest.approx(1.0)
    costs.add_timed("SB epoch", 10, 25.0)
    assert costs.cost("SB epoch") == pytest.approx(2.5)
    assert costs.cost("LB epoch") is None
    costs.add_timed("LB epoch", 0, 5.0)  # A stage that did no unit measures nothing.
    assert costs.cost("LB epoch") is None


def test_capped_work_makes_the_estimate_an_upper_bound():
    costs = progress.CostModel()
    costs.add_timed("SB epoch", 5, 60.0)
    capped = costs.estimate({"SB epoch": 10}, capped={"SB epoch"})
    assert capped.describe() == "ETA at most 2.0 min"
    assert not costs.estimate({"SB epoch": 0}, capped={"SB epoch"}).upper_bound


def test_each_stage_line_shows_the_cost_of_the_work_left():
    # One trial: SB 50 epochs, LB 100 epochs (plateau stopping: a cap), a pair, 2 + 2 measurements.
    work = {"SB epoch": 50, "LB epoch": 100, "pair": 1, "full-space lbfgsb measurement": 4}
    tracker, clock, lines = _tracker(work, capped={"LB epoch"})

    stage = tracker.begin("training SB", "SB epoch", 50)
    clock.now += 100.0  # 2 s per SB epoch.
    tracker.end(stage)
    stage = tracker.begin("training LB", "LB epoch", 100)
    clock.now += 60.0
    tracker.end(stage, units_done=40)  # A plateau stop after 40 epochs: 1.5 s per LB epoch.
    stage = tracker.begin("distances", "pair", 1)
    clock.now += 6.0
    tracker.end(stage)
    stage = tracker.begin("SB sharpness", "full-space lbfgsb measurement", 2)
    clock.now += 30.0
    tracker.end(stage)
    tracker.skip("LB sharpness: measured earlier", "full-space lbfgsb measurement", 2,
                 recorded=(2, 4.0))
    tracker.begin("tables")

    assert lines == [
        "[gap 1/6, 0.0 min elapsed, ETA unknown: not yet timed: 50 SB epochs, "
        "100 LB epochs, 1 pair, 4 full-space lbfgsb measurements] training SB",
        "[gap 2/6, 1.7 min elapsed, ETA unknown: not yet timed: 100 LB epochs, "
        "1 pair, 4 full-space lbfgsb measurements] training LB",
        # 1 pair and 4 measurements left, neither timed yet.
        "[gap 3/6, 2.7 min elapsed, ETA unknown: not yet timed: 1 pair, "
        "4 full-space lbfgsb measurements] distances",
        "[gap 4/6, 2.8 min elapsed, ETA unknown: not yet timed: "
        "4 full-space lbfgsb measurements] SB sharpness",
        # 2 measurements left at the 15 s each timed here (not the 2 s recorded earlier).
        "[gap 5/6, 3.3 min elapsed, ETA 0.5 min] LB sharpness: measured earlier",
        "[gap 6/6, 3.3 min elapsed, ETA 0.0 min] tables",
    ]
    assert tracker.remaining == {"SB epoch": 0, "LB epoch": 0, "pair": 0,
                                 "full-space lbfgsb measurement": 0}


def test_resumed_work_leaves_only_what_is_left():
    tracker, clock, lines = _tracker({"SB epoch": 20, "LB epoch": 20})
    tracker.skip("SB trained earlier", "SB epoch", 20, recorded=(20, 40.0))  # 2 s per epoch.
    tracker.finished_earlier("LB epoch", 15)  # An interrupted LB run had done 15 epochs.
    tracker.costs.add_recorded("LB epoch", 15, 15.0)
    stage = tracker.begin("training LB", "LB epoch", 5)
    assert lines[-1] == "[gap 2/6, 0.0 min elapsed, ETA 0.1 min] training LB"  # 5 x 1 s.
    clock.now += 10.0
    tracker.end(stage)
    assert tracker.costs.cost("LB epoch") == pytest.approx(2.0)
    assert tracker.estimate().seconds == 0 and tracker.estimate().untimed == {}


def test_figure_progress_eta_is_the_pace_of_every_stage_done():
    # A training of 120 s, then two cheap stages of 1 s: a median would promise 1 s per stage
    # left; the pace so far is (120 + 1 + 1) / 3 s per stage.
    clock, lines = FakeClock(), []
    tracker = common.Progress("remedies", 6, clock=clock,
                              log=lambda fmt, *args: lines.append(fmt % args))
    tracker.stage("training")
    for seconds, name in ((120.0, "sharpness"), (1.0, "recording"), (1.0, "training")):
        clock.now += seconds
        tracker.stage(name)
    assert lines[0] == "[remedies 1/6, 0.0 min elapsed] training"
    # 122 s / 3 stages done x 3 stages left (the one starting and two more) = 122 s.
    assert lines[-1] == ("[remedies 4/6, 2.0 min elapsed, ETA 2.0 min at the pace so far] "
                         "training")
