def atomic_save(obj: dict | str, path: Path) -> None:
    """Writes a temporary file and renames it over `path`: a crash or Ctrl-C mid-write leaves the previous
    file whole. A dict goes through torch.save, a str (the JSON files) is written as UTF-8. A failed write
    (a full disk) removes the temporary file and keeps the previous one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if isinstance(obj, str):
                f.write(obj.encode())
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        then = "--resume from it" if path.name == "checkpoint.pt" else "run again"
        raise UsageError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} is kept; free space "
                         f"and {then}") from None


def make_run_dir(path: Path) -> None:
    """The run directory, or one line saying why it cannot be written, before any training."""
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # an existing directory on a read-only filesystem passes mkdir
    except OSError as e:
        raise UsageError(f"cannot write the run directory {path}: {e.strerror or e}; choose another --run-name or "
                         "a writable working directory") from None


def check_resumable(path: str, step: int, at_end: bool, args) -> None:
    """Refuses, before anything is written, to resume a checkpoint from before its finished run's end (that
    would overwrite the run's files) or one with nothing left to train (that would overwrite its summary)."""
    summary = Path(path).parent / "summary.json"
    try:
        finished = int(json.loads(summary.read_text())["global_step"]) if summary.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{summary} is damaged; start a new run (without --resume) instead") from None
    if finished is not None and step < finished:  # at or past it, the checkpoint extends the run: fine
        raise UsageError(f"{summary.parent} finished at step {finished} (summary.json); its checkpoint.pt is from "
                         f"step {step}, so resuming would redo steps past it and overwrite the finished run's files; "
                         "start a new run (without --resume) instead")
    if at_end:
        raise UsageError(f"{path} ends at step {step}, already the end of --total-timesteps {args.total_timesteps}; "
                         "pass a larger --total-timesteps to train on")


def set_torch_rng(ckpt: dict) -> None:
    """The random state a checkpoint holds; CUDA's for the first min(saved, here) devices (older files lack it)."""
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"][: torch.cuda.device_count()])


class MetricsLog:
    """runs/<run-name>/metrics.csv (METRICS' columns) and wandb. Each row is one flushed write, so an interrupted
    run leaves whole rows. A resumed run drops the rows after its checkpoint (to be redone), then appends; any
    other run starts the file afresh, even under a name used before: two runs' rows would make one curve."""

    def __init__(self, path: Path, wandb_run=None, resume_step: int | None = None):
        if resume_step is not None and path.exists():
            with open(path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["global_step"]) <= resume_step]
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRICS)
                writer.writeheader()
                writer.writerows(kept)
            os.replace(tmp, path)
        new = resume_step is None or not path.exists()
        self.file = open(path, "w" if new else "a", newline="")  # noqa: SIM115 (open for the run; close() closes it)
        self.writer = csv.DictWriter(self.file, fieldnames=METRICS, extrasaction="ignore")
        if new:
            self.writer.writeheader()
        self.wandb_run = wandb_run

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if v != ""}, step=row["global_step"])

    def close(self) -> None:
        self.file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def wandb_server() -> tuple[str, int]:
    """Host and port of the wandb server WANDB_BASE_URL names (default https://api.wandb.ai)."""
    import urllib.parse  # here, like socket, threading and netrc below: only --track needs them

    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        port = url.port
    except ValueError:  # not a number; wandb itself will report the URL
        port = None
    return url.hostname or "", port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the wandb server accepts a connection, probed in a thread: DNS cannot hang the run either."""
    import socket
    import threading

    result = []

    def probe():
        with contextlib.suppress(OSError):
            socket.create_connection(wandb_server(), timeout=timeout).close()
            result.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def init_wandb(args, run_name: str, run_dir: Path):
    """wandb.init, offline (upload later with `wandb sync`) when the server does not answer (wandb would
    wait 90 s, then fail) or no API key is configured in WANDB_API_KEY or netrc (it would prompt or fail)."""
    import netrc
    import urllib.parse

    import wandb

    mode, reason = os.environ.get("WANDB_MODE"), None
    if mode is None and not wandb_reachable():
        reason = "no network"
    elif mode is None and not os.environ.get("WANDB_API_KEY"):
        netloc = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
        try:
            key = netrc.netrc(os.environ.get("NETRC") or None).authenticators(netloc)
        except (OSError, netrc.NetrcParseError):  # no netrc file, or a broken one: no key
            key = None
        reason = None if key else "no API key (run `wandb login` or set WANDB_API_KEY)"
    if reason:
        mode = "offline"
        print(f"wandb: {reason}, logging offline to {run_dir}/wandb; upload later with `wandb sync`")
    return wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, name=run_name,
                      config=asdict(args), dir=str(run_dir), mode=mode or "online")


def host_copy(module: nn.Module, device: torch.device) -> nn.Module:
    """The network that acts, one small forward pass per env step: on the CPU the module itself (the same
    numbers, no copy); on a GPU a copy in host memory, so an env step makes no round trip to the device."""
    return module if device.type == "cpu" else copy.deepcopy(module).cpu()


def refresh_host_copy(host: nn.Module, module: nn.Module) -> None:
    """The trained module's weights into its host copy, in place; nothing to do when they are one."""
    if host is not module:
        host.load_state_dict(module.state_dict())
