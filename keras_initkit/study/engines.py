"""Engines that run trial tasks: serial (this process), process (a local spawn pool), ray (a Ray cluster).

An engine is one small interface: `Engine.map(fn, tasks, on_error)` calls the picklable top-level `fn` on each task
somewhere and yields the results as they finish (any order); when the engine itself fails on a task (a worker
process died, a Ray task was lost) it yields `on_error(task, exception)` instead, so one bad trial never stops the
others. Each worker configures TensorFlow once, before any model is built: intra/inter-op thread pools sized to the
CPUs it owns, GPU memory growth (several workers can share a GPU), and op determinism when asked.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from typing import Any

ENGINES = ("serial", "process", "ray")
RAY_MISSING = '--engine ray needs Ray, an optional extra: pip install "keras_initkit[ray]"'


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _check_jobs(jobs: Any) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"`jobs` must be an integer >= 1. Received: jobs={jobs!r}")


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    # TF intra-op threads of each worker (None: TensorFlow's default, all cores); inter-op gets max(2, threads)
    threads: int | None = None
    # tf.config.experimental.enable_op_determinism() in each worker
    deterministic: bool = False

    def tf_threads(self) -> dict[str, int]:
        """The TF thread pools each worker asks for (0: TensorFlow's default, one thread per core)."""
        return {"intra_op": self.threads or 0, "inter_op": max(2, self.threads) if self.threads else 0}


_done: set[str] = set()


def configure_worker(settings: WorkerSettings) -> None:
    """Set TF thread pools and GPU memory growth once per process, and op determinism when asked.

    Thread pools can only be sized before TensorFlow's runtime starts, so only the first call sizes them; op
    determinism, once on, stays on for the life of the process (TensorFlow has no public switch to turn it off).
    """
    if settings.threads and "threads" not in _done:
        os.environ.setdefault("OMP_NUM_THREADS", str(settings.threads))
    import keras

    if keras.config.backend() != "tensorflow":
        return
    import tensorflow as tf

    if settings.threads and "threads" not in _done:
        _done.add("threads")
        try:
            tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(2, settings.threads))
        except RuntimeError as e:  # the TF runtime already started in this process
            warnings.warn(f"could not set TF threads to {settings.threads}: {e}", RuntimeWarning, stacklevel=2)
    if "gpu" not in _done:
        _done.add("gpu")
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialized: leave it
                pass
    if settings.deterministic and "deterministic" not in _done:
        _done.add("deterministic")
        tf.config.experimental.enable_op_determinism()


class Engine:
    """Runs `fn(task)` for each task and yields the results as they finish."""

    name = "engine"

    def __init__(self, settings: WorkerSettings | None = None):
        self.settings = settings or WorkerSettings()

    @property
    def jobs(self) -> int:
        return 1

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any], on_error: Callable[[Any, BaseException], Any]):
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "jobs": self.jobs,
            "threads_per_worker": self.settings.threads,
            "tf_threads": self.settings.tf_threads(),
        }

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SerialEngine(Engine):
    """One trial after the other in this process."""

    name = "serial"

    def map(self, fn, tasks, on_error) -> Iterator[Any]:
        configure_worker(self.settings)
        for task in tasks:
            try:
                result = fn(task)
            except Exception as e:  # fn records a trial's own errors; this is the engine failing
                result = on_error(task, e)
            yield result


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)  # the driver died (e.g. SIGKILL): do not linger as an orphan
        time.sleep(1.0)


def _init_process_worker(settings: WorkerSettings, parent_pid: int) -> None:
    # Ctrl-C is the driver's to handle: it terminates the pool (a worker never prints a KeyboardInterrupt traceback)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    configure_worker(settings)


@contextlib.contextmanager
def _sigint_blocked():
    """Hold SIGINT back while workers are spawned (they inherit the mask, so a Ctrl-C while a worker starts up does
    not reach it); a Ctrl-C that arrives meanwhile is delivered to the driver right after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _terminate_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Stop the pool's worker processes now (SIGTERM), the trials they were running included."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()


class ProcessEngine(Engine):
    """A local pool of `jobs` spawned processes (default: one per CPU), each with cpu_count // jobs TF threads.

    At most `jobs` tasks are in flight, so when a worker dies (segfault, out of memory) exactly those tasks are
    reported through `on_error`, the pool is rebuilt and the remaining tasks go on. When the driver is interrupted
    (Ctrl-C) or `map` is closed early, the workers are terminated at once, the trials they were running with them.
    """

    name = "process"

    def __init__(self, jobs: int | None = None, threads: int | None = None, deterministic: bool = False):
        jobs = cpu_count() if jobs is None else jobs
        _check_jobs(jobs)
        super().__init__(WorkerSettings(threads or max(1, cpu_count() // jobs), deterministic))
        self._jobs = jobs

    @property
    def jobs(self) -> int:
        return self._jobs

    def _pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(
            max_workers=self._jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_process_worker,
            initargs=(self.settings, os.getpid()),
        )

    def map(self, fn, tasks, on_error) -> Iterator[Any]:
        pending = collections.deque(tasks)
        inflight: dict[cf.Future, Any] = {}
        pool = self._pool()
        finished = False
        try:
            while pending or inflight:
                while pending and len(inflight) < self._jobs:
                    task = pending.popleft()
                    with _sigint_blocked():
                        inflight[pool.submit(fn, task)] = task
                done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                broken = None
                for future in done:
                    task = inflight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool as e:
                        broken = e
                        result = on_error(task, e)
                    except Exception as e:
                        result = on_error(task, e)
                    yield result
                if broken is not None:
                    for task in list(inflight.values()):
                        yield on_error(task, broken)
                    inflight.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
            finished = True
        finally:
            if not finished:  # Ctrl-C, or the consumer stopped early: do not wait for the running trials
                _terminate_workers(pool)
            pool.shutdown(wait=finished, cancel_futures=True)


def _ray_call(fn, task, settings: WorkerSettings):
    configure_worker(settings)
    return fn(task)


class RayEngine(Engine):
    """Ray tasks: a local instance with `num_cpus` (default: every CPU and GPU of this machine) when no `address`, an
    existing cluster otherwise.

    Each trial is one task asking for `cpus_per_trial` CPUs and `gpus_per_trial` GPUs (a fraction shares a GPU);
    the model is built inside the task, and the worker's TF thread pools are sized to `cpus_per_trial`.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_trial: int = 1,
        gpus_per_trial: float = 0.0,
        deterministic: bool = False,
    ):
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise ImportError(RAY_MISSING) from e
        if not isinstance(cpus_per_trial, int) or cpus_per_trial < 1:
            raise ValueError(f"`cpus_per_trial` must be an integer >= 1. Received: cpus_per_trial={cpus_per_trial!r}")
        if gpus_per_trial < 0:
            raise ValueError(f"`gpus_per_trial` must be >= 0. Received: gpus_per_trial={gpus_per_trial!r}")
        super().__init__(WorkerSettings(cpus_per_trial, deterministic))
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self._started = False
        self._cluster_cpus: float | None = None

    @property
    def jobs(self) -> int:
        """Trials that can run at once: the CPUs asked for, else the cluster's once it is up (0 before that)."""
        cpus = self.num_cpus or self._cluster_cpus
        return max(1, int(cpus // self.cpus_per_trial)) if cpus else 0

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(address=self.address, cpus_per_trial=self.cpus_per_trial, gpus_per_trial=self.gpus_per_trial)
        return out

    def _init(self):
        import ray

        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=self.num_cpus, **kwargs)
            self._started = True
        self._cluster_cpus = ray.cluster_resources().get("CPU")
        return ray

    def map(self, fn, tasks, on_error) -> Iterator[Any]:
        ray = self._init()
        remote = ray.remote(_ray_call).options(num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial)
        refs = {remote.remote(fn, task, self.settings): task for task in tasks}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task = refs.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as e:  # a lost worker or node; the trial's own errors come back as results
                        result = on_error(task, e)
                    yield result
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_engine(
    name: str,
    jobs: int | None = None,
    deterministic: bool = False,
    address: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0.0,
) -> Engine:
    """An engine by name.

    `jobs`: process workers (default: one per CPU), or the trials a local Ray instance runs at once (it gets
    jobs * cpus_per_trial CPUs; default: every CPU of this machine; with an `address`, the cluster decides).
    """
    if name not in ENGINES:
        raise ValueError(f"`engine` must be one of {ENGINES}. Received: engine={name!r}")
    if jobs is not None:
        _check_jobs(jobs)
    if name == "serial":
        return SerialEngine(WorkerSettings(None, deterministic))
    if name == "process":
        return ProcessEngine(jobs, deterministic=deterministic)
    num_cpus = None if address or jobs is None else jobs * cpus_per_trial
    return RayEngine(address, num_cpus, cpus_per_trial, gpus_per_trial, deterministic)
