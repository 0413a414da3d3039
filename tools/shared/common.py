class UsageError(Exception):
    """Bad input: reported as one `error:` line and exit code 2, without a traceback."""


class Diverged(Exception):
    """A loss, value, return or weight that is no longer finite: one `error:` line and exit code 3."""


RANGES = {"positive": lambda v: v > 0, "0 or more": lambda v: v >= 0,
          "in (0, 1]": lambda v: 0 < v <= 1, "in [0, 1]": lambda v: 0 <= v <= 1}


def check_flags(args, ranges: dict[str, tuple[str, ...]]) -> None:
    """--seed's range, every float finite (nan passes any comparison), `ranges`, the --resume/--evaluate file."""
    if not 0 <= args.seed < 2**31:  # numpy and the envs take seeds up to 2**32 - 1, offsets added
        raise UsageError(f"--seed must be from 0 to 2**31 - 1, got {args.seed}")
    if args.run_name is not None and (args.run_name in ("", "..") or Path(args.run_name).name != args.run_name):
        raise UsageError(f"--run-name must be one directory name, made under runs/ (no / and not . or ..), got "
                         f"{args.run_name!r}")
    checks = [(name, "a finite number", math.isfinite) for name, v in vars(args).items() if isinstance(v, float)]
    for name, want, ok in checks + [(name, kind, RANGES[kind]) for kind, names in ranges.items() for name in names]:
        if not ok(getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be {want}, got {getattr(args, name)}")
    for name in ("resume", "evaluate"):
        if getattr(args, name) is not None and not Path(getattr(args, name)).is_file():
            raise UsageError(f"--{name}: no file at {getattr(args, name)}")
    if args.evaluate and args.eval_episodes == 0:
        raise UsageError("--eval-episodes must be positive with --evaluate")


EVAL_STEP_CAP = 10_000  # evaluation steps per episode of an env with no time limit: 10x MuJoCo's 1,000


def check_env(env_id: str, env_kwargs: dict | None = None) -> tuple[gym.Space, gym.Space]:
    """Makes the env once, resets it and takes a step: a bad id, package, keyword or space, or an env that breaks
    its contract from the start, is one error line before anything is written. Returns its spaces."""
    try:
        env = make_env(env_id, env_kwargs)
    except (gym.error.Error, ImportError, TypeError) as e:
        raise UsageError(f"cannot make {env_id}" + (f" with --env-kwargs {env_kwargs}" if env_kwargs else "")
                         + f": {e}") from None
    space, action_space = env.observation_space, env.action_space  # as make_env flattened them
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        env.close()
        raise UsageError(f"{env_id} has {space} observations; {ALGORITHM}.py's networks take a flat vector (a 1-D "
                         "Box, or a Discrete, MultiDiscrete, Tuple or Dict space, which it flattens); image "
                         "observations need a convolutional network, which it does not have")
    if problem := action_space_error(action_space):
        env.close()
        raise UsageError(f"{env_id} {problem}")
    limit, call, shapes = env.spec.max_episode_steps if env.spec else None, "reset", []
    with warnings.catch_warnings():  # gymnasium's env checker would warn first: the error line says it
        warnings.simplefilter("ignore")
        try:  # a broken env would otherwise fail deep inside the vector env, as a traceback
            shapes.append(np.shape(env.reset(seed=0)[0]))
            call = "step"
            obs, reward, *_ = env.step(action_space.sample())
            np.asarray(obs, np.float32), float(reward)  # numbers, as the networks and the return need them
            problem = next((f"returns observations of shape {shape}, not {space.shape}"
                            for shape in (*shapes, np.shape(obs)) if shape != space.shape), None)
        except Exception as e:  # noqa: BLE001 (an env can raise anything)
            problem = f"raised {type(e).__name__} in {call}(): {(str(e).strip().splitlines() or [''])[0]}"
        finally:
            env.close()
    if problem:
        raise UsageError(f"{env_id} breaks the gymnasium env contract: it {problem}; fix the env")
    if limit is None:
        print(f"note: {env_id} has no time limit; each evaluation episode stops after {EVAL_STEP_CAP} steps")
    return space, action_space


def atomic_save(obj: dict | str, path: Path) -> None:
    """torch.save (a dict) or UTF-8 text (a str) to a temporary file renamed over `path`: a crash, Ctrl-C or
    full disk mid-write leaves the previous file whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(obj.encode()) if isinstance(obj, str) else torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # an interrupt too: no .tmp left beside the previous file
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        then = "--resume from it" if path.name == "checkpoint.pt" else "run again"
        raise UsageError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} is kept; free space "
                         f"and {then}") from None


def run_directory(args) -> Path:  # runs/<--run-name>; with --resume and no --run-name, the checkpoint's own
    if args.resume and not args.run_name:
        return Path(args.resume).parent
    return Path("runs") / (args.run_name or f"{args.env_id}__{ALGORITHM}__{args.seed}__{int(time.time())}")


def check_resumable(path: str, step: int, at_end: bool, args) -> None:
    """Refuses a checkpoint that would overwrite a finished run (one from before its end, resumed in place) or
    that has nothing left to do. At the end of an unfinished run (stopped in its final evaluation) only the
    final evaluation and summary.json are left."""
    summary = Path(path).parent / "summary.json"
    try:
        finished = int(json.loads(summary.read_text())["global_step"]) if summary.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{summary} is damaged; start a new run (without --resume) instead") from None
    in_place = run_directory(args).resolve() == summary.parent.resolve()
    if finished is not None and step < finished and in_place:  # at or past it, the checkpoint extends the run
        raise UsageError(f"{summary.parent} finished at step {finished} (summary.json); its checkpoint.pt is from "
                         f"step {step}, so resuming would redo steps past it and overwrite the finished run's files; "
                         "resume into a new run with --run-name NAME instead")
    if at_end and finished is not None:
        raise UsageError(f"{path} ends at step {step}, already the end of --total-timesteps {args.total_timesteps}; "
                         "pass a larger --total-timesteps to train on")
    if at_end:
        print(f"{path} is at the end of training (step {step}): the final evaluation and summary.json are left")


def set_torch_rng(ckpt: dict, device: torch.device) -> None:  # and CUDA's, its first devices, for a run on CUDA
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"][: torch.cuda.device_count()])


class MetricsLog:
    """runs/<run-name>/metrics.csv (METRICS' columns, one flushed write a row) and wandb. A resumed run starts
    with the rows of `source` (its checkpoint's run) up to its checkpoint; any other starts afresh."""

    def __init__(self, path: Path, wandb_run=None, resume_step: int | None = None, source: Path | None = None):
        kept, dropped = [], 0
        if source is not None and source.is_file():
            # Read as untrusted: a row cut by a crash, NUL bytes, a step that is no whole number or out of order.
            for row in csv.DictReader(io.StringIO(source.read_text(errors="replace").replace("\0", ""))):
                try:  # whole: no field missing or extra, its step a whole number after the last row kept
                    step = int(row["global_step"])
                    whole = None not in row and None not in row.values() and step > int(kept[-1]["global_step"]
                                                                                          if kept else -1)
                except (KeyError, ValueError, TypeError):
                    whole = False
                kept += [row] if whole and step <= resume_step else []
                dropped += not whole
            if dropped:
                print(f"{source}: left out {dropped} damaged rows")
        table = io.StringIO()
        csv.DictWriter(table, fieldnames=METRICS).writeheader()
        csv.DictWriter(table, fieldnames=METRICS, extrasaction="ignore").writerows(kept)
        atomic_save(table.getvalue(), path)
        self.file = open(path, "a", newline="")  # noqa: SIM115 (open for the run; close() closes it)
        self.writer = csv.DictWriter(self.file, fieldnames=METRICS, extrasaction="ignore")
        self.wandb_run = wandb_run
        self.release = lambda: None  # open_run's: the run directory's lock

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if v != ""}, step=row["global_step"])

    def close(self) -> None:
        self.file.close()
        self.release()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def wandb_server() -> tuple[str, int]:
    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = None
    with contextlib.suppress(ValueError):  # not a number; wandb itself will report the URL
        port = url.port
    return url.hostname or "", port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the wandb server (WANDB_BASE_URL) answers, probed in a thread: DNS cannot hang the run either."""
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
    """wandb.init, offline when the server does not answer or no API key is set (wandb would wait, prompt or fail)."""
    import wandb  # here: only --track needs it

    mode, reason = os.environ.get("WANDB_MODE"), None
    if mode is None and not wandb_reachable():
        reason = "no network"
    elif mode is None and not os.environ.get("WANDB_API_KEY"):
        netloc = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
        key = None
        with contextlib.suppress(OSError, netrc.NetrcParseError):  # no netrc file, or a broken one: no key
            key = netrc.netrc(os.environ.get("NETRC") or None).authenticators(netloc)
        reason = None if key else "no API key (run `wandb login` or set WANDB_API_KEY)"
    if reason:
        mode = "offline"
        print(f"wandb: {reason}, logging offline to {run_dir}/wandb; upload later with `wandb sync`")
    return wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, name=run_name,
                      config=asdict(args), dir=str(run_dir), mode=mode or "online")


def lock_directory(run_dir: Path) -> int | None:
    """The run directory locked for this process: by flock, which the system lets go when the process ends, however
    it ends. None where there is no flock (Windows): there runs go unlocked."""
    try:
        import fcntl
    except ImportError:
        return None
    lock = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise UsageError(f"{run_dir} is in use by another run that is still going; wait for it to end or choose "
                         "another --run-name") from None
    return lock


def open_run(args, resume_step: int | None) -> tuple[Path, MetricsLog]:
    """The run's directory (run_directory), locked while the run goes on, with its args.json, and its metrics.csv
    (and wandb, with --track); one line saying why before any training when the directory cannot be written,
    is another live process's, or holds a finished run that this one would overwrite."""
    run_dir, source = run_directory(args), Path(args.resume).parent if args.resume else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()  # an existing directory on a read-only filesystem passes mkdir
        lock = lock_directory(run_dir)
    except OSError as e:
        raise UsageError(f"cannot write the run directory {run_dir}: {e.strerror or e}; choose another --run-name or "
                         "a writable working directory") from None
    if (run_dir / "summary.json").exists() and not (source and source.resolve() == run_dir.resolve()):
        if lock is not None:
            os.close(lock)
        raise UsageError(f"{run_dir} holds a finished run (summary.json), which this run would overwrite; choose "
                         "another --run-name, or delete that directory first")
    atomic_save(json.dumps(asdict(args) | {"run_name": run_dir.name}, indent=2), run_dir / "args.json")
    wandb_run = init_wandb(args, run_dir.name, run_dir) if args.track else None
    metrics = MetricsLog(run_dir / "metrics.csv", wandb_run, resume_step, source and source / "metrics.csv")
    if lock is not None:  # let go once: when the run ends (MetricsLog.close) or its objects are dropped
        metrics.release = weakref.finalize(metrics, os.close, lock)
    return run_dir, metrics


def check_model_fits(path: str, state: dict, args) -> None:
    """--evaluate on another env (--env-id, --env-kwargs): it must give the model's observation size and, where
    the model's own env can be made to compare with, an action space of its kind and size."""
    trained = state["args"]["env_id"], state["args"].get("env_kwargs", {})  # none before the flag
    if (args.env_id, args.env_kwargs) == trained:
        return
    kind = lambda env: (env.observation_space.shape[0], type(env.action_space).__name__,  # noqa: E731
                        gym.spaces.flatdim(env.action_space))
    with contextlib.closing(make_env(args.env_id, args.env_kwargs)) as env:
        here = kind(env)
    there = (state["obs_dim"], *here[1:])
    with contextlib.suppress(Exception), contextlib.closing(make_env(*trained)) as env:  # not installed here: skip
        there = kind(env)
    if here != there:
        raise UsageError(f"{path} was trained on {trained[0]} (observation size, action space and size {there}); "
                         f"{args.env_id} gives {here}; evaluate it on an env of the same sizes")


def host_copy(module: nn.Module, device: torch.device) -> nn.Module:  # a GPU module's acting copy in host memory
    return module if device.type == "cpu" else copy.deepcopy(module).cpu()


def refresh_host_copy(host: nn.Module, module: nn.Module, parts: tuple[str, ...] = ("",)) -> None:
    """The host copy's weights (those under `parts`, the ones acting reads) from a GPU module's, written in place:
    one flat copy from the device, one wait, where copying tensor by tensor waits once for each."""
    if host is not module:
        names = [name for name, _ in module.named_parameters() if name.startswith(parts)]
        flat = torch.cat([module.get_parameter(name).detach().reshape(-1) for name in names]).cpu()
        for name, values in zip(names, flat.split([module.get_parameter(name).numel() for name in names])):
            host.get_parameter(name).data.copy_(values.view_as(host.get_parameter(name)))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device` in one copy: to a GPU from page-locked memory, a copy the host does not wait for."""
    tensor = torch.from_numpy(array)
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def eval_seed(seed: int) -> int:  # episode i gets seed + 10_000 + i, apart from the training envs', alike later
    return seed + 10_000


def evaluation_env(env_id: str, env_kwargs: dict, video_dir: Path | None) -> gym.Env:
    """The evaluation env, recording every episode to video_dir if given and the env renders (else one line);
    an env with no time limit gets one of EVAL_STEP_CAP steps, so that evaluation always ends."""
    def make(render_mode: str | None = None) -> gym.Env:
        env = make_env(env_id, env_kwargs, render_mode=render_mode)
        return env if env.spec and env.spec.max_episode_steps else gym.wrappers.TimeLimit(env, EVAL_STEP_CAP)

    env = make()
    if video_dir is None:
        return env
    env.close()
    reason = "it has no rgb_array render mode"
    if "rgb_array" in env.metadata.get("render_modes", []):
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders off-screen through EGL, without a display
        env = make("rgb_array")
        try:
            env.reset()
            env.render()  # the first frame: where a missing display or GL library shows, before any episode
            return gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, name_prefix="eval")
        except Exception as e:  # noqa: BLE001 (renderers fail in many ways: no display, no GL library, no package)
            env.close()
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    print(f"video skipped: {env_id} cannot render frames here ({reason}); evaluating without video", flush=True)
    return make()


def tyro_cli(argv: list[str] | None, **kwargs) -> Args:
    """tyro.cli, its parse error (a wrong type, an unknown flag, a missing value) as one line: the first paragraph
    under the title of tyro's message, boxed or plain."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(Args, args=argv, **kwargs)
    except SystemExit as e:
        if not e.code:  # --help
            raise
        message = []
        for line in captured.getvalue().splitlines()[1:]:  # the title: a line, or in the box's top edge
            line = line.strip("│ ")
            if line and not set(line) <= set("─-╰╯"):
                message.append(line)
            elif message:  # a rule, the box's bottom edge or a blank line ends it
                break
        raise UsageError(f"{' '.join(message).rstrip('.') or captured.getvalue().strip()}; see --help") from None
    sys.stderr.write(captured.getvalue())  # anything else tyro said
    return args


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line; with --resume or --evaluate the saved run's settings are the defaults."""
    args = tyro_cli(argv)
    saved_from = args.resume or args.evaluate
    if saved_from and Path(saved_from).is_file():
        try:
            saved = torch.load(saved_from, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (unreadable, not a torch file, or objects weights_only refuses)
            saved = e
        if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict) or "algorithm" not in saved:
            with open(saved_from, "rb") as f:  # torch.save writes a zip archive; one it cannot read is cut short
                damaged = isinstance(saved, (RuntimeError, OSError)) and f.read(4) == b"PK\x03\x04"
            raise UsageError(f"cannot read {saved_from}: " + ("the file is damaged or incomplete (written when the "
                             "machine failed?); use an earlier copy" if damaged else
                             "not a model.pt or checkpoint.pt saved by these scripts"))
        if saved["algorithm"] != ALGORITHM:
            other, flag = saved["algorithm"], "--resume" if args.resume else "--evaluate"
            raise UsageError(f"{saved_from} was saved by {other}.py, not {ALGORITHM}.py; use python {other}.py "
                             f"{flag} {saved_from}")
        saved = {k: v for k, v in saved["args"].items() if k in {f.name for f in fields(Args)}}
        # --run-name is not inherited: given, it names a new run, started from the checkpoint (run_directory)
        args = tyro_cli(argv, default=Args(**saved | {"resume": args.resume, "evaluate": args.evaluate,
                                                      "run_name": None}))
    return args


def stop(signum: int, frame) -> None:  # SIGTERM (kill, a scheduler ending the job) stops a run as Ctrl-C does
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    # numpy's overflow warnings from acting on diverging weights: the divergence check says it in one line
    warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning, __name__)
    if threading.current_thread() is threading.main_thread():  # where Python lets a handler be set
        signal.signal(signal.SIGTERM, stop)
    try:
        args = parse_args(argv)
        if args.evaluate:
            check_args(args)
            run_evaluation(args)
        else:
            train(args)
    except (UsageError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3 if isinstance(e, Diverged) else 2)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{f' ({e})' if str(e) else ''}; checkpoints and logs written so far are complete",
              file=sys.stderr)
        sys.exit(143 if str(e) == "SIGTERM" else 130)  # the codes a shell gives for each signal
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"error: out of memory ({(str(e).strip().splitlines() or ['no detail'])[0]}); lower the sizes your "
              "flags ask for (--buffer-size, --num-envs, --num-steps, --batch-size)", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the last resort for the file system's errors: one line too
        print(f"error: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
