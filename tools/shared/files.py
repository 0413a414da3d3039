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
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()  # an existing directory on a read-only filesystem passes mkdir
    except OSError as e:
        raise UsageError(f"cannot write the run directory {path}: {e.strerror or e}; choose another --run-name or "
                         "a writable working directory") from None


def finished_step(run_dir: Path) -> int | None:
    """The step a finished run ended at, from its summary.json; None if the run has not finished."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        return None
    try:
        return int(json.loads(summary.read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{summary} is damaged; start a new run (without --resume) instead") from None


class MetricsLog:
    """runs/<run-name>/metrics.csv (the columns METRICS names), and wandb when tracking.

    Each row is one write, flushed, so an interrupted run leaves whole rows. A resumed run first drops
    the rows after its checkpoint (they are about to be redone), then appends. A run that is not resumed
    starts the file afresh, even under a name used before: two runs' rows would make one curve.
    """

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
    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        port = url.port
    except ValueError:  # not a number; wandb itself will report the URL
        port = None
    return url.hostname or "", port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the wandb server accepts a connection, probed in a thread: DNS cannot hang the run either."""
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
                      config=dataclasses.asdict(args), dir=str(run_dir), mode=mode or "online")


def host_copy(module: nn.Module, device: torch.device) -> nn.Module:
    """The network that acts, one small forward pass per env step: on the CPU the module itself (the same
    numbers, no copy); on a GPU a copy in host memory, so an env step makes no round trip to the device."""
    return module if device.type == "cpu" else copy.deepcopy(module).cpu()


def refresh_host_copy(host: nn.Module, module: nn.Module) -> None:
    """The trained module's weights into its host copy, in place; nothing to do when they are one."""
    if host is not module:
        host.load_state_dict(module.state_dict())
