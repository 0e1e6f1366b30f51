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
