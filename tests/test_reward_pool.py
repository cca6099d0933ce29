"""The reward worker pool: results in order, a call stuck in C killed at its deadline, stop requests."""

import time

import pytest

import user_rewards
from thermorl.rewards.pool import STOP_GRACE_S, Call, RewardInterrupted, RewardPool, function_key, picklable


@pytest.fixture
def pool():
    pool = RewardPool(2)
    yield pool
    pool.close()


def test_calls_run_in_workers_and_come_back_in_order(pool):
    key = function_key()
    calls = [Call(key, user_rewards.add, (i,), {"b": 10}) for i in range(5)]
    outcomes = pool.run(calls, timeout_s=60)
    assert [o.status for o in outcomes] == ["ok"] * 5
    assert [o.value for o in outcomes] == [10, 11, 12, 13, 14]
    assert len(pool.workers) == 2 and pool.replaced == 0


def test_a_call_stuck_in_c_code_is_killed_at_its_deadline_and_its_worker_replaced(pool):
    stuck, ok = function_key(), function_key()
    pool.run([Call(ok, user_rewards.add, (1,))], timeout_s=60)  # workers up: the deadline measures the call only
    started = time.monotonic()
    outcomes = pool.run(
        [Call(stuck, user_rewards.stuck_in_c, ([], ["x"])), Call(ok, user_rewards.add, (2,))], timeout_s=1.0
    )
    assert time.monotonic() - started < 1.0 + 2.0
    assert [o.status for o in outcomes] == ["timeout", "ok"] and outcomes[1].value == 2
    assert pool.replaced == 1
    again = pool.run([Call(ok, user_rewards.add, (i,)) for i in range(4)], timeout_s=60)
    assert [o.value for o in again] == [0, 1, 2, 3] and len(pool.workers) == 2


def test_errors_are_reported_with_their_type_and_the_worker_keeps_serving(pool):
    key = function_key()
    outcomes = pool.run([Call(key, user_rewards.raises, ([], ["c"])), Call(function_key(), user_rewards.add, (3,))], 60)
    assert outcomes[0].status == "error" and outcomes[0].error == "ValueError: boom"
    assert outcomes[1].value == 3 and pool.replaced == 0


def test_a_stop_request_gives_a_stuck_call_up_after_its_grace(pool):
    requested_at = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(RewardInterrupted):
        pool.run([Call(function_key(), user_rewards.stuck_in_c, ([], ["x"]))], timeout_s=600,
                 should_stop=lambda: time.monotonic() > requested_at)
    assert time.monotonic() - started < 0.5 + STOP_GRACE_S + 2.0
    assert pool.replaced == 1 and all(w.process.is_alive() for w in pool.workers)


def test_lambdas_and_closures_cannot_be_sent_but_module_functions_can():
    offset = 1
    assert not picklable(lambda prompts, completions, **kw: [0.0])
    assert not picklable(lambda: offset)
    assert picklable(user_rewards.digit_fraction)
