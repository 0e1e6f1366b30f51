import json

import pytest

from tofu_jax import schedule as S


def test_constructors_and_token_counts():
    sch = S.tofu_split(12, 8, 6)
    assert [b.op for b in sch.blocks] == ["prune"] * 6 + ["merge_mlerp"] * 6
    assert sch.token_counts(197) == [197 - 8 * i for i in range(13)]
    dec = S.tome_inflect(12, 8, -0.5)
    rs = [b.r for b in dec.blocks]
    assert rs[0] == 12 and rs[-1] == 4 and rs == sorted(rs, reverse=True)
    assert S.constant(4, 3).total_r == 12
    assert S.from_list(["prune", "merge_avg"], [0, 2]).blocks[0].op == "none"
    assert hash(sch) == hash(S.tofu_split(12, 8, 6))


def test_json_round_trip(tmp_path):
    sch = S.from_list(
        ["prune", "merge_mlerp", "none"], [4, 2, 0], prop_attn=False, mlerp_norm="weighted_mean"
    )
    path = tmp_path / "s.json"
    sch.to_json(path, meta={"budget": 0.4})
    assert S.Schedule.from_json(path) == sch
    assert S.Schedule.from_json(sch.to_json()) == sch
    assert json.loads(path.read_text())["version"] == S.SCHEDULE_VERSION


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"version": 2, "blocks": []}', "unsupported schedule version 2"),
        ('{"version": 1, "blocks": [{"op": "squash", "r": 1}]}', "block 0: unknown op 'squash'"),
        ('{"version": 1, "blocks": [{"op": "prune", "r": -1}]}', "non-negative"),
        ('{"version": 1, "blocks": [], "colour": 1}', "unknown schedule fields"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_json_is_rejected(text, needle):
    with pytest.raises(S.ScheduleError, match=needle):
        S.Schedule.from_json(text)


def test_validate_names_block_and_counts():
    with pytest.raises(S.ScheduleError, match="schedule has 3 blocks but the model has depth 4"):
        S.constant(3, 1).validate(4, 50)
    with pytest.raises(S.ScheduleError, match=r"block 1 \(prune\) asks to remove r=30 tokens but has 40"):
        S.from_list(["prune", "prune"], [10, 30]).validate(2, 50)
    with pytest.raises(S.ScheduleError, match="missing"):
        S.Schedule.from_json("/nonexistent/missing.json")


# (depth, r, inflect) -> ToMe's parse_r output, worked out by hand from its formula: start at
# int(r (1 - inflect)), end at 2r - start, truncate every step of the linear ramp.
TOME_TABLE = {
    (12, 8, -0.5): [12, 11, 10, 9, 9, 8, 7, 6, 6, 5, 4, 4],
    (12, 13, -0.5): [19, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7],
    (12, 7, 0.5): [3, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11],  # a ramp from 3.5 would start 3, 4, 4, ...
    (12, 5, 0.0): [5] * 12,
    (6, 3, -1.0): [6, 4, 3, 2, 1, 0],
}


@pytest.mark.parametrize("case", sorted(TOME_TABLE))
def test_tome_r_reproduces_parse_r(case):
    assert S.tome_r(*case) == TOME_TABLE[case]
    assert [b.r for b in S.tome_inflect(*case).blocks] == TOME_TABLE[case]


def test_tome_clamped_shrinks_r_where_tokens_run_out():
    strict = S.constant(12, 16)
    with pytest.raises(S.ScheduleError, match="block 11"):
        strict.validate(12, 197, 1)
    clamped = S.tome_clamped(12, 16, num_tokens=197, protected=1)
    assert [b.r for b in clamped.blocks] == [16] * 11 + [10]
    clamped.validate(12, 197, 1)
    assert S.tome_clamped(12, 8, 197, inflect=-0.5) == S.tome_inflect(12, 8, -0.5)


def test_compact_form_round_trips_and_rejects_typos():
    sched = S.from_list(["none", "prune", "prune", "merge_mlerp"], [0, 11, 12, 12])
    assert S.Schedule.from_compact(sched.describe()) == sched
    assert S.Schedule.load("nonex1,prune:11x1,prune:12x1,merge_mlerp:12") == sched
    long = ",".join(["merge_importance_mlerp:3"] * 12)  # longer than a file name may be
    assert S.Schedule.load(long).depth == 12
    for bad in ("prune", "none:3", "prune:x2", "prune:2x0", "prune:2x000", "", "prune:2,,"):
        with pytest.raises(S.ScheduleError, match="expected op:r or none"):
            S.Schedule.from_compact(bad)
    with pytest.raises(S.ScheduleError, match="unknown op 'melt'"):
        S.Schedule.load("melt:2x12")
