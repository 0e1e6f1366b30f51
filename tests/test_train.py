"""Train states (Orbax) in process on the single default device.

Training on meshes of 2 and 8 devices, and train states restored across meshes, run in worker
processes: tests/test_parallel.py. A file that is no train state: tests/fuzz/test_files.py.
"""

import numpy as np


def test_train_state_round_trip_on_one_device(tmp_path):
    import jax

    from tofu_jax import parallel as par
    from tofu_jax.train import load_train_state, save_train_state

    params = {"w": np.arange(32, dtype=np.float32).reshape(4, 8), "b": np.ones(8, np.float32)}
    opt_state = (np.full((4, 8), 2.0, np.float32), np.zeros((), np.int32))
    save_train_state(tmp_path / "state", params, opt_state, 7, {"note": "single device"})
    mesh = par.make_mesh(devices=jax.devices()[:1])
    p, o, step, meta = load_train_state(tmp_path / "state", params, opt_state, mesh)
    assert step == 7 and meta == {"note": "single device"}
    np.testing.assert_array_equal(np.asarray(p["w"]), params["w"])
    np.testing.assert_array_equal(np.asarray(o[0]), opt_state[0])
    assert p["w"].sharding.mesh == mesh
