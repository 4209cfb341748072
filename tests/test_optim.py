"""Tests of arraycnn.optim: Adam against TensorFlow's and a per-tensor float64 reference, SGD against a NumPy
loop, the flat buffer against per-tensor steps, adopted views, in-place updates, checkpoint round-trips,
dtypes, argument checks and convergence on a quadratic."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
from conftest import TOLERANCES

from arraycnn.backend import Array, cuda_available, get_namespace, slices_are_views, to_device, to_numpy
from arraycnn.optim import SGD, Adam, Optimizer

BACKENDS = [
    "numpy",
    "array_api_strict",
    pytest.param(
        "cupy", marks=pytest.mark.skipif(not cuda_available(), reason="CuPy with a CUDA device is not available")
    ),
]
SHAPES = [(3, 3, 2, 4), (4,), (5, 2)]  # a conv kernel, a bias, a dense matrix
STEPS = 10
MAKERS = {  # fresh optimisers per test: instances must not carry state from one parametrisation to the next
    "sgd": lambda: SGD(0.1),
    "sgd-momentum": lambda: SGD(0.1, momentum=0.9),
    "adam": lambda: Adam(1e-2),
}


@pytest.fixture(params=BACKENDS)
def xp(request: pytest.FixtureRequest) -> ModuleType:
    return get_namespace(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    return request.param


def _problem(dtype: str, seed: int = 0) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Host start values and ``STEPS`` gradient lists; gradient scales vary over 1e-3..10 between steps."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[(rng.standard_normal(s) * 10 ** rng.uniform(-3, 1)).astype(dtype) for s in SHAPES]
             for _ in range(STEPS)]
    return params, grads


def _dev(host: np.ndarray, xp: ModuleType) -> Array:
    """A device copy that never aliases ``host`` (``to_device`` may, on NumPy)."""
    return to_device(np.array(host, copy=True), xp)


def _eps(dtype: str) -> float:
    return float(np.finfo(dtype).eps)


def _is_cpu(xp: ModuleType) -> bool:
    return not xp.__name__.endswith("cupy")


# --------------------------------------------------------------------------------------------------------
# Adam vs TensorFlow


@pytest.mark.parametrize(
    ("beta1", "beta2", "eps"),
    [(0.9, 0.999, 1e-7), (0.875, 1 - 2.0**-10, 1e-7), (0.5, 0.9375, 1e-2)],
    ids=["keras-defaults", "float32-exact-betas", "large-eps"],
)
def test_adam_matches_tensorflow(xp: ModuleType, dtype: str, beta1: float, beta2: float, eps: float) -> None:
    """Same start and gradient sequence through ours and ``tf.keras.optimizers.Adam``.

    Keras quirks: its learning rate lives in a float32 variable, and ``ops.cast(beta, dtype)`` turns the
    Python float into a float32 tensor first, so its betas are float32-rounded even for float64 variables.
    Hence lr = 2**-7 (exact in float32), a set of betas exact in float32 (where float64 must agree to
    ~1e-13) next to Keras's defaults (where Keras's own rounding of 0.999 dominates), and a large eps
    that would expose eps placed as PyTorch places it (on the bias-corrected v).

    Error bound, d = machine epsilon of the dtype, Db = |float32(b) - b|. Both sides do the same float ops
    on m, v and p except the scalar step ``alpha = lr*sqrt(1-b2^t)/(1-b1^t)``: Keras computes it in the
    dtype from float32-rounded betas, we in float64 from the exact ones. Since 1-b^t >= t*b^(t-1)*(1-b),
    an error Db in b moves 1-b^t by at most Db/(1-b) relatively, and the pow/subtract rounding adds
    <= 2d/(1-b); the sqrt halves the b2 part. So alpha differs relatively by at most
        a_err = (Db2/2 + 2d)/(1-b2) + (Db1 + 2d)/(1-b1).
    The rest (m, v, sqrt, divide) adds a few ulps of the update; we allow 8d. Each update is at most lr*B
    with B = max(1, (1-b1)/sqrt(1-b2)) (Kingma & Ba, sec. 2.1; eps only shrinks it), and each side rounds
    ``p -= update`` to half an ulp, d*|p| together. Errors do not feed back (gradients are fixed), so
        |ours - tf| <= STEPS * (lr*B*(a_err + 8d) + d*(|p| + STEPS*lr*B)).
    That is ~1e-13 in float64 with float32-exact betas, ~2e-6 with Keras's defaults (Keras's 0.999 is off
    by 1.3e-8), and ~1e-5 in float32.
    """
    tf = pytest.importorskip("tensorflow")
    lr = 2.0**-7
    p0, grads = _problem(dtype)
    params = [_dev(p, xp) for p in p0]
    opt = Adam(lr, beta1, beta2, eps)
    tf_vars = [tf.Variable(p) for p in p0]
    tf_opt = tf.keras.optimizers.Adam(learning_rate=lr, beta_1=beta1, beta_2=beta2, epsilon=eps)
    for g in grads:
        opt.step(params, [_dev(x, xp) for x in g])
        tf_opt.apply_gradients(zip([tf.constant(x) for x in g], tf_vars, strict=True))

    d, B = _eps(dtype), max(1.0, (1 - beta1) / math.sqrt(1 - beta2))
    db1, db2 = (abs(float(np.float32(b)) - b) for b in (beta1, beta2))
    a_err = (db2 / 2 + 2 * d) / (1 - beta2) + (db1 + 2 * d) / (1 - beta1)
    for i, (ours, ref) in enumerate(zip(params, tf_vars, strict=True)):
        ref = ref.numpy()
        bound = STEPS * (lr * B * (a_err + 8 * d) + d * (np.abs(ref) + STEPS * lr * B))
        err = np.abs(to_numpy(ours).astype(np.float64) - ref)
        assert np.all(err <= bound), f"param {i}: max error {err.max():.3g} > bound {bound.min():.3g}"
        assert not np.array_equal(ref, p0[i])  # it did move


# --------------------------------------------------------------------------------------------------------
# SGD vs a NumPy loop


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_matches_numpy_loop(xp: ModuleType, dtype: str, momentum: float) -> None:
    """The reference is PyTorch's SGD written out in NumPy in the same dtype and op order, so CPU
    backends must agree bitwise. On a GPU each op is still IEEE-rounded, but we allow one ulp per op of
    p and lr*v per step: |diff| <= STEPS * 2d * (|p| + lr*max|v|)."""
    lr = 0.05
    p0, grads = _problem(dtype)
    params = [_dev(p, xp) for p in p0]
    opt = SGD(lr, momentum=momentum)
    ref = [p.copy() for p in p0]
    vel = [np.zeros_like(p) for p in p0]
    vmax = 0.0
    for g in grads:
        opt.step(params, [_dev(x, xp) for x in g])
        for i in range(len(ref)):
            vel[i] = momentum * vel[i] + g[i] if momentum else g[i]
            ref[i] = ref[i] - lr * vel[i]
            vmax = max(vmax, float(np.abs(vel[i]).max()))
    for ours, want in zip(params, ref, strict=True):
        if _is_cpu(xp):
            np.testing.assert_array_equal(to_numpy(ours), want)
        else:
            bound = STEPS * 2 * _eps(dtype) * (np.abs(want) + lr * vmax)
            assert np.all(np.abs(to_numpy(ours) - want) <= bound)


# --------------------------------------------------------------------------------------------------------
# one flat buffer against one update per tensor


def _reference_adam(p0: list[np.ndarray], grads: list[list[np.ndarray]], lr: float, beta1: float, beta2: float,
                    eps: float) -> list[np.ndarray]:
    """Adam as the class docstring writes it, tensor by tensor, in float64."""
    params = [p.astype(np.float64) for p in p0]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, step in enumerate(grads, start=1):
        for i, g in enumerate(step):
            g = g.astype(np.float64)
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g**2
            params[i] -= lr * math.sqrt(1 - beta2**t) / (1 - beta1**t) * m[i] / (np.sqrt(v[i]) + eps)
    return params


def test_adam_matches_a_per_tensor_reference(xp: ModuleType, dtype: str) -> None:
    """The flat update against the textbook per-tensor form in float64, to the dtype's tolerance."""
    lr, beta1, beta2, eps = 1e-2, 0.9, 0.999, 1e-7
    p0, grads = _problem(dtype)
    params = [_dev(p, xp) for p in p0]
    opt = Adam(lr, beta1, beta2, eps)
    for g in grads:
        opt.step(params, [_dev(x, xp) for x in g])
    for i, (ours, ref) in enumerate(zip(params, _reference_adam(p0, grads, lr, beta1, beta2, eps), strict=True)):
        TOLERANCES[dtype].assert_close(ours, ref, f"param {i}")
        assert not np.array_equal(to_numpy(ours), p0[i])


@pytest.mark.parametrize("kind", MAKERS)
def test_flat_step_equals_one_optimizer_per_tensor(xp: ModuleType, dtype: str, kind: str) -> None:
    """One optimiser over all tensors (one flat buffer) against one optimiser per tensor; and a run whose odd
    steps hold back parameter 1's gradient, which sends the others down the per-tensor path on segments of
    the flat state. The same element-wise ops on the same numbers: CPU backends agree bitwise; on a GPU
    we allow 4 ulps per step."""
    p0, grads = _problem(dtype)
    flat, alone, mixed = ([_dev(p, xp) for p in p0] for _ in range(3))
    opt, per_tensor, other = MAKERS[kind](), [MAKERS[kind]() for _ in p0], MAKERS[kind]()
    for k, g in enumerate(grads):
        opt.step(flat, [_dev(x, xp) for x in g])
        for o, p, x in zip(per_tensor, alone, g, strict=True):
            o.step([p], [_dev(x, xp)])
        other.step(mixed, [None if k % 2 and i == 1 else _dev(x, xp) for i, x in enumerate(g)])
    for a, b in [*zip(flat, alone, strict=True), (mixed[0], alone[0]), (mixed[2], alone[2])]:
        if _is_cpu(xp):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
        else:
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=4 * STEPS * _eps(dtype))
    assert not np.array_equal(to_numpy(mixed[1]), to_numpy(alone[1]))  # it missed half its updates


@pytest.mark.parametrize("kind", MAKERS)
def test_adopted_parameters_are_views_of_the_flat_buffer(xp: ModuleType, dtype: str, kind: str) -> None:
    """adopt() returns the same values; stepping the adopted arrays gives bitwise what stepping the originals
    gives, and where slices are views (NumPy, CuPy) the arrays are updated with no scatter: they share the
    optimiser's buffer. Arrays that are not the adopted ones are still stepped correctly (gather/scatter)."""
    p0, grads = _problem(dtype)
    plain, opt_plain = [_dev(p, xp) for p in p0], MAKERS[kind]()
    opt = MAKERS[kind]()
    adopted = opt.adopt([_dev(p, xp) for p in p0])
    assert [tuple(a.shape) for a in adopted] == [p.shape for p in p0]
    for a, p in zip(adopted, p0, strict=True):
        np.testing.assert_array_equal(to_numpy(a), p)
    for g in grads[:4]:
        opt.step(adopted, [_dev(x, xp) for x in g])
        opt_plain.step(plain, [_dev(x, xp) for x in g])
    if slices_are_views(xp):
        assert opt._adopted(adopted)
        adopted[0][...] = 0.0  # writing through a view writes the optimiser's buffer
        assert float(to_numpy(xp.max(xp.abs(opt._flat[:p0[0].size])))) == 0.0
        adopted[0][...] = _dev(to_numpy(plain[0]), xp)
    else:
        assert not opt._adopted(adopted)  # array-api-strict: the arrays are returned as they are
    copies = [_dev(to_numpy(a), xp) for a in adopted]  # e.g. a model reloaded into fresh arrays
    for g in grads[4:]:
        opt.step(copies, [_dev(x, xp) for x in g])
        opt_plain.step(plain, [_dev(x, xp) for x in g])
    for a, b in zip(copies, plain, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_adopted_state_round_trips_through_a_checkpoint(xp: ModuleType) -> None:
    """An adopted optimiser saves the same per-tensor state; loading it into another (adopted or not)
    continues bitwise as the original does; loading into the adopted views keeps them adopted."""
    p0, grads = _problem("float32")
    a = Adam(1e-2)
    pa = a.adopt([_dev(p, xp) for p in p0])
    for g in grads[:4]:
        a.step(pa, [_dev(x, xp) for x in g])
    state = a.state_dict()
    assert {f"m.{i}" for i in range(3)} <= set(state) and state["m.0"].shape == p0[0].shape
    b = Adam()
    pb = [_dev(to_numpy(p), xp) for p in pa]
    b.load_state_dict(state, pb)
    a.load_state_dict(state, pa)  # e.g. a resume into the same model
    assert a._adopted(pa) == slices_are_views(xp)
    for g in grads[4:]:
        a.step(pa, [_dev(x, xp) for x in g])
        b.step(pb, [_dev(x, xp) for x in g])
    for x, y in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


def test_adopt_checks_its_arguments() -> None:
    p0, grads = _problem("float32")
    opt = Adam()
    opt.step(list(p0), list(grads[0]))
    with pytest.raises(ValueError, match="first stepped with 3 params, got 2"):
        opt.adopt(p0[:2])
    with pytest.raises(ValueError, match=r"params\[1\] has shape \(5,\) but this optimizer's state for it has \(4,\)"):
        opt.adopt([p0[0], np.zeros(5, np.float32), p0[2]])
    with pytest.raises(TypeError, match="share one dtype"):
        Adam().adopt([p0[0], p0[1].astype(np.float64)])


# --------------------------------------------------------------------------------------------------------
# in place, dtype, None gradients



@pytest.mark.parametrize("kind", MAKERS)
def test_step_updates_in_place_and_keeps_dtype(xp: ModuleType, dtype: str, kind: str) -> None:
    opt = MAKERS[kind]()
    p0, grads = _problem(dtype)
    params = [_dev(p, xp) for p in p0]
    held = list(params)  # what a layer would keep
    g_dev = [_dev(x, xp) for x in grads[0]]
    opt.step(params, g_dev)
    opt.step(params, g_dev)
    for i, (p, h) in enumerate(zip(params, held, strict=True)):
        assert p is h
        assert p.dtype == getattr(xp, dtype)
        assert not np.array_equal(to_numpy(h), p0[i])  # the held object sees the update
        np.testing.assert_array_equal(to_numpy(g_dev[i]), grads[0][i])  # gradients untouched
    for key, value in opt.state_dict().items():
        if "." in key:
            assert value.dtype == np.dtype(dtype), key


def test_none_grads_are_skipped(xp: ModuleType) -> None:
    p0, grads = _problem("float32")
    params = [_dev(p, xp) for p in p0]
    opt = Adam(1e-2)
    opt.step(params, [_dev(grads[0][0], xp), None, _dev(grads[0][2], xp)])
    np.testing.assert_array_equal(to_numpy(params[1]), p0[1])
    assert not np.array_equal(to_numpy(params[0]), p0[0])
    assert opt.t == 1
    np.testing.assert_array_equal(opt.state_dict()["m.1"], 0)


# --------------------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize("kind", MAKERS)
def test_state_dict_round_trip(xp: ModuleType, dtype: str, kind: str, tmp_path) -> None:
    """A stepped k times, saved to an npz (no pickle), loaded into B: B continues exactly as A does."""
    k = 4
    a = MAKERS[kind]()
    p0, grads = _problem(dtype)
    pa = [_dev(p, xp) for p in p0]
    for g in grads[:k]:
        a.step(pa, [_dev(x, xp) for x in g])
    np.savez(tmp_path / "opt.npz", **a.state_dict())
    with np.load(tmp_path / "opt.npz", allow_pickle=False) as f:
        state = dict(f)

    b = type(a)(lr=0.5)  # other hyper-parameters: the state's win, as in PyTorch
    pb = [_dev(to_numpy(p), xp) for p in pa]
    b.load_state_dict(state, pb)
    assert b.hyper_values == a.hyper_values and b.t == a.t == k
    for g in grads[k:]:
        a.step(pa, [_dev(x, xp) for x in g])
        b.step(pb, [_dev(x, xp) for x in g])
    for x, y in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))
    saved, now = state, a.state_dict()
    for key in saved:  # the saved copy did not follow A's later steps
        if "." in key:
            assert not np.array_equal(saved[key], now[key]), key


def test_state_dict_contents_and_casting(xp: ModuleType) -> None:
    opt = Adam(1e-3)
    assert set(opt.state_dict()) == {"t", "num_params", "lr", "beta1", "beta2", "eps"}
    p0, grads = _problem("float64")
    params = [_dev(p, xp) for p in p0]
    opt.step(params, [_dev(x, xp) for x in grads[0]])
    state = opt.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["t"].shape == () and int(state["t"]) == 1 and float(state["lr"]) == 1e-3
    assert {f"{s}.{i}" for s in "mv" for i in range(3)} <= set(state)
    # float64 state into float32 params: cast to the params' dtype and backend
    p32 = [_dev(p.astype(np.float32), xp) for p in p0]
    other = Adam()
    other.load_state_dict(state, p32)
    other.step(p32, [_dev(x.astype(np.float32), xp) for x in grads[1]])
    assert all(p.dtype == xp.float32 for p in p32)
    assert other.state_dict()["m.0"].dtype == np.float32
    # a state saved before any step loads anywhere
    Adam().load_state_dict(Adam(0.1).state_dict(), params)


def test_load_state_dict_rejects_mismatches() -> None:
    p0, grads = _problem("float32")
    opt = Adam()
    opt.step(list(p0), list(grads[0]))
    state = opt.state_dict()
    fresh = Adam()
    with pytest.raises(ValueError, match="holds 3 params but 2"):
        fresh.load_state_dict(state, p0[:2])
    with pytest.raises(ValueError, match=r"state m\.1 has shape \(4,\) but params\[1\] has \(5,\)"):
        fresh.load_state_dict(state, [p0[0], np.zeros(5, np.float32), p0[2]])
    with pytest.raises(ValueError, match=r"missing \['v\.2'\]"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "v.2"}, p0)
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        fresh.load_state_dict(state | {"extra": np.zeros(())}, p0)
    with pytest.raises(ValueError, match=r"missing keys .*beta1"):
        fresh.load_state_dict(SGD(0.1).state_dict(), p0)
    with pytest.raises(ValueError, match="beta2"):
        fresh.load_state_dict(state | {"beta2": np.asarray(1.0)}, p0)
    assert fresh.t == 0 and fresh.state_dict().keys() == Adam().state_dict().keys()  # nothing changed


# --------------------------------------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: SGD(0.0), "lr"),
        (lambda: SGD(-1.0), "lr"),
        (lambda: SGD(float("nan")), "lr"),
        (lambda: SGD(0.1, momentum=-0.5), "momentum"),
        (lambda: Adam(lr=0.0), "lr"),
        (lambda: Adam(beta1=1.0), "beta1"),
        (lambda: Adam(beta1=-0.1), "beta1"),
        (lambda: Adam(beta2=1.0), "beta2"),
        (lambda: Adam(eps=0.0), "eps"),
    ],
)
def test_bad_hyper_parameters(make, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must"):
        make()


@pytest.mark.parametrize("kind", MAKERS)
def test_mismatched_grads(xp: ModuleType, kind: str) -> None:
    opt = MAKERS[kind]()
    params = [xp.ones((2, 3)), xp.ones(4)]
    with pytest.raises(ValueError, match="got 2 and 1"):
        opt.step(params, [xp.ones((2, 3))])
    with pytest.raises(ValueError, match=r"grads\[1\] shape \(5,\) != params\[1\] shape \(4,\)"):
        opt.step(params, [xp.ones((2, 3)), xp.ones(5)])
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype"):
        opt.step(params, [xp.ones((2, 3), dtype=xp.float32), xp.ones(4)])
    opt.step(params, [xp.ones((2, 3)), xp.ones(4)])
    with pytest.raises(ValueError, match="first stepped with 2 params, got 3"):
        opt.step([*params, xp.ones(1)], [xp.ones((2, 3)), xp.ones(4), xp.ones(1)])


def test_mixed_backends_rejected() -> None:
    strict = get_namespace("array_api_strict")
    with pytest.raises(TypeError, match="different backends"):
        SGD(0.1).step([np.ones(3)], [strict.ones(3, dtype=strict.float64)])


# --------------------------------------------------------------------------------------------------------
# convergence


@pytest.mark.parametrize(
    ("make", "steps"),
    [(lambda: SGD(0.1), 300), (lambda: SGD(0.05, momentum=0.9), 300), (lambda: Adam(0.05), 500)],
    ids=["sgd", "sgd-momentum", "adam"],
)
def test_minimises_a_quadratic(xp: ModuleType, dtype: str, make: Callable[[], Optimizer], steps: int) -> None:
    """f(p) = sum(a * (p - c)**2) / 2 with curvatures a in [0.5, 5]; grad = a * (p - c), computed on device."""
    opt = make()
    rng = np.random.default_rng(1)
    a, c = (_dev(x.astype(dtype), xp) for x in (rng.uniform(0.5, 5, (4, 3)), rng.standard_normal((4, 3))))
    p = _dev(np.zeros((4, 3), dtype), xp)

    def loss() -> float:
        return float(to_numpy(xp.sum(a * (p - c) ** 2)) / 2)

    start = loss()
    for _ in range(steps):
        opt.step([p], [a * (p - c)])
    assert loss() < 1e-4 * start
