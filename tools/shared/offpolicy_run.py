def check_args(args) -> None:
    check_flags(args, FLAG_RANGES)
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise UsageError(f"--hidden-sizes needs one or more positive layer sizes, got {args.hidden_sizes}")
    if args.learning_starts > args.buffer_size:
        raise UsageError(f"--learning-starts {args.learning_starts} is more than --buffer-size {args.buffer_size}: "
                         "the buffer could never hold enough transitions to start training")
    if args.total_timesteps <= args.learning_starts:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is not more than --learning-starts "
                         f"{args.learning_starts}: training would never start")
    space, action_space = check_env(args.env_id, args.env_kwargs)
    # The buffer's float32 rows (s, a, r, s', terminated), allocated at once: more than the machine has is refused
    # here, where allocating it would fail with a traceback or be killed by the system once it fills.
    need = 4 * args.buffer_size * (2 * space.shape[0] + (action_space.shape or (1,))[0] + 2)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need
    if need > have:
        raise UsageError(f"--buffer-size {args.buffer_size} needs {need / 2**30:.1f} GiB for the replay buffer on "
                         f"{args.env_id}, more than this machine's {have / 2**30:.1f} GiB of memory; lower "
                         "--buffer-size")


class Run:
    """The files and console of one run, so that train() reads as the algorithm (docs/running.md). Saving and
    resuming go by train()'s lists: what model.pt holds (`model`) and what a checkpoint adds (`training`)."""

    def __init__(self, args, device: torch.device, model: dict, training: dict, rng: np.random.Generator):
        self.args, self.device, self.model, self.training, self.rng = args, device, model, training, rng
        self.start_step, self.start_updates, self.checkpoint_step, self.final_saved = 0, 0, None, False
        self.time_before, self.clock_step = 0.0, 0  # wall time before a resume; the step the clock starts at
        if args.resume:
            self.resume(args.resume)
        self.dir, self.metrics = open_run(args, self.start_step if args.resume else None)
        if device.type == "cuda":
            acting = next(name for name, obj in self.model.items() if isinstance(obj, nn.Module))
            print(f"device cuda: acting on a CPU copy of the {acting} (refreshed after each update); "
                  "updates and the replay buffer on the GPU")
        self.values: dict[str, list[torch.Tensor]] = {}  # per gradient step, averaged per row: no sync per step
        self.episode_returns, self.episode_lengths, self.recent_returns = [], [], deque(maxlen=20)
        self.start_time = self.last_print = time.time()

    def state(self, objects: dict) -> dict:  # the env's spaces as they are, the buffer unless --no-save-buffer
        return {name: None if isinstance(obj, ReplayBuffer) and not self.args.save_buffer else obj.state_dict()
                if hasattr(obj, "state_dict") else obj for name, obj in objects.items()}

    def model_state(self, step: int) -> dict:
        return {"algorithm": ALGORITHM, "args": asdict(self.args), **self.state(self.model), "global_step": step}

    def save_checkpoint(self, step: int, num_updates: int) -> None:
        if what := self.non_finite_weight():  # never replace the last finite checkpoint with a diverged one
            raise self.diverged(step, what)
        atomic_save(self.model_state(step) | self.state(self.training) | {
            "num_updates": num_updates, "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,  # a CPU run: no CUDA
            "elapsed": self.elapsed()}, self.dir / "checkpoint.pt")
        self.checkpoint_step = step

    def save_final(self, step: int, num_updates: int) -> None:
        """Before the final evaluation (which may fail): the final checkpoint (with --checkpoint-every), model.pt."""
        if what := self.non_finite_weight():  # first the last row, the diagnosis
            self.log({"global_step": step, "gradient_steps": num_updates}, None)
            raise self.diverged(step, what)
        if self.args.checkpoint_every > 0:
            self.save_checkpoint(step, num_updates)
        if self.args.save_model:
            atomic_save(self.model_state(step), path := self.dir / "model.pt")
            print(f"model saved to {path}; evaluate it with: python {ALGORITHM}.py --evaluate {path}")
        self.final_saved = True

    def resume(self, path: str) -> None:
        """Everything in a checkpoint back in place, once it fits and would overwrite no finished run."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves it to the device
        if ckpt.get("algorithm") != ALGORITHM or "torch_rng" not in ckpt:  # model.pt holds no training state
            raise UsageError(f"{path} is not a checkpoint.pt of {ALGORITHM}.py; resume from that run's checkpoint.pt")
        self.start_step, self.start_updates = ckpt["global_step"], ckpt["num_updates"]
        check_resumable(path, self.start_step, self.start_step >= self.args.total_timesteps, self.args)
        changed = [f"--{k.replace('_', '-')}" for k in ("env_id", "hidden_sizes")
                   if ckpt["args"][k] != getattr(self.args, k)]
        fix = f"resume with the flags it was trained with (drop {' and '.join(changed) or '--env-id/--hidden-sizes'})"
        for name, obj in (self.model | self.training).items():
            try:
                if hasattr(obj, "load_state_dict") and ckpt[name] is not None:  # None: --no-save-buffer
                    obj.load_state_dict(ckpt[name])
                elif not hasattr(obj, "load_state_dict") and ckpt[name] != obj:  # the env's spaces
                    raise ValueError(f"{name} is {ckpt[name]} there, {obj} here")
            except (RuntimeError, ValueError) as e:  # torch's size mismatch, in one line
                raise UsageError(f"{path} does not fit these networks: {str(e).strip().splitlines()[-1].strip()}; "
                                 f"{fix}") from None
        self.rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        set_torch_rng(ckpt, self.device)
        self.checkpoint_step, self.time_before = self.start_step, ckpt.get("elapsed", 0.0)
        self.clock_step = 0 if "elapsed" in ckpt else self.start_step  # older files had no clock
        print(f"resumed from {path} at step {self.start_step} with {self.training['buffer'].size} transitions "
              "in the buffer")

    def diverged(self, step: int, what: str) -> "Diverged":
        """The error that stops a run; no model.pt or summary.json of it is left to look like a result."""
        kept = (f"{self.dir}/checkpoint.pt (step {self.checkpoint_step}) holds the last finite weights"
                if self.checkpoint_step is not None else "no checkpoint was written")
        if self.final_saved and self.args.save_model:
            (self.dir / "model.pt").unlink(missing_ok=True)
        self.metrics.close()
        rows = self.training["buffer"].rows[: self.training["buffer"].size]
        first_bad = rows[~rows.isfinite().all(1)][:1]  # a transition with a number that is not finite
        if len(first_bad) and first_bad[0, self.training["buffer"].places["actions"]].isfinite().all():
            return Diverged(f"{self.args.env_id} returned observations or rewards that are not finite for a finite "
                            f"action (a transition in the replay buffer; at step {step} {what}); check the env; {kept}")
        if what.split()[0].endswith("return") and self.non_finite_weight() is None:  # finite weights: the rewards
            return Diverged(f"{self.args.env_id} returned rewards that are not finite (at step {step} {what}); "
                            f"check the env; {kept}")
        noise = " or check --exploration-noise" if hasattr(self.args, "exploration_noise") else ""
        return Diverged(f"training diverged at step {step}: {what}; {kept}; try a lower --learning-rate{noise}")

    def non_finite_weight(self) -> str | None:
        return next((f"{name}.{key} is not finite" for name, obj in self.model.items() if isinstance(obj, nn.Module)
                     for key, t in obj.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), None)

    def record_episodes(self, infos: dict) -> None:  # those that ended in this step (RecordEpisodeStatistics)
        if "episode" in infos:
            self.episode_returns.extend(infos["episode"]["r"][infos["_episode"]].tolist())
            self.episode_lengths.extend(infos["episode"]["l"][infos["_episode"]].tolist())

    def record(self, values: dict[str, torch.Tensor]) -> None:  # one gradient step's, by metrics.csv column
        for name, value in values.items():
            self.values.setdefault(name, []).append(value)

    def due(self, every: int, step: int, previous_step: int, last: bool = True) -> bool:
        """A multiple of `every` (0: never) in (previous_step, step]; at the last step, `last`."""
        return last if step >= self.args.total_timesteps else every > 0 and step // every > previous_step // every

    def video_dir(self, step: int) -> Path | None:  # the final evaluation's, with --capture-video
        return self.dir / "videos" if self.args.capture_video and step >= self.args.total_timesteps else None

    def elapsed(self) -> float:  # the whole run's wall time: this process's and its checkpoint's
        return self.time_before + time.time() - self.start_time

    def sps(self, step: int, elapsed: float) -> float:  # steps per second of wall time, evaluations included
        return (step - self.clock_step) / max(elapsed, 1e-9)

    def log(self, row: dict, evaluation: tuple[list[float], list[float], list[float]] | None) -> None:
        """A metrics row: the caller's values, recorded ones averaged, episodes ended since, the evaluation. A value
        that is not finite stops the run after its row (the diagnosis) is written."""
        elapsed = self.elapsed()
        self.recent_returns.extend(self.episode_returns)
        row = row | {"time": round(elapsed, 2), "sps": round(self.sps(row["global_step"], elapsed))}
        row |= {name: torch.cat([v.reshape(-1) for v in values]).mean().item() for name, values in self.values.items()}
        row |= {"episodic_return": np.mean(self.episode_returns) if self.episode_returns else "",
                "episodic_length": np.mean(self.episode_lengths) if self.episode_lengths else "",
                "episodes": len(self.episode_returns)}  # after the losses: the first non-finite one is named
        if evaluation is not None:
            returns, discounted, start_q = (np.mean(x) for x in evaluation)
            row |= {"eval_return": returns, "eval_discounted_return": discounted, "eval_start_q": start_q}
            print(f"eval at step {row['global_step']}: return {returns:.1f} | Q(first state) {start_q:.2f} vs "
                  f"discounted return earned {discounted:.2f}", flush=True)
        self.metrics.write(row)
        self.values, self.episode_returns, self.episode_lengths = {}, [], []
        for column, value in row.items():
            if value != "" and not np.isfinite(value):
                raise self.diverged(row["global_step"], f"{column} is {value}")

    def progress(self, step: int, exploring: str) -> None:
        if time.time() - self.last_print < self.args.log_interval and step < self.args.total_timesteps:
            return
        self.last_print, elapsed = time.time(), self.elapsed()
        sps = self.sps(step, elapsed)
        recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "n/a"
        print(f"step {step:>9}/{self.args.total_timesteps} | {sps:5.0f} SPS | return {recent} (last "
              f"{len(self.recent_returns)} episodes) | {exploring} | {elapsed:5.0f}s elapsed, "
              f"~{(self.args.total_timesteps - step) / max(sps, 1e-9):.0f}s left", flush=True)

    def finish(self, step: int, evaluation: tuple[list[float], list[float], list[float]] | None) -> dict:
        if step == self.start_step:  # resumed at its end, stopped in its final evaluation: what was left of it
            self.save_final(step, self.start_updates)
            if self.args.eval_episodes:
                networks = [obj for obj in self.model.values() if isinstance(obj, nn.Module)]
                evaluation = evaluate(*networks, self.args.env_id, self.args.env_kwargs, self.args.eval_episodes,
                                      eval_seed(self.args.seed), self.args.gamma, self.device, self.video_dir(step))
                self.log({"global_step": step, "gradient_steps": self.start_updates}, evaluation)
        wall_time = self.elapsed()
        summary = {"algorithm": ALGORITHM, "env_id": self.args.env_id, "seed": self.args.seed, "global_step": step,
                   "wall_time": round(wall_time, 1), "sps": round(self.sps(step, wall_time)),
                   "train_return_recent": float(np.mean(self.recent_returns)) if self.recent_returns else None}
        if evaluation is not None:
            summary |= report_eval(*evaluation)
        atomic_save(json.dumps(summary, indent=2), self.dir / "summary.json")
        self.metrics.close()
        return summary


def report_eval(returns: list[float], discounted: list[float], start_q: list[float]) -> dict:  # summary.json's entries
    print(f"eval: {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)} episodes (greedy)")
    print(f"      Q(first state) predicted {np.mean(start_q):.2f}, discounted return earned "
          f"{np.mean(discounted):.2f}: overestimation {np.mean(start_q) - np.mean(discounted):+.2f}")
    return {"eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)), "eval_returns": returns,
            "eval_discounted_returns": discounted, "eval_start_q": start_q}


def run_evaluation(args) -> dict:
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")  # evaluation acts one observation at a time, on the host in any case
    *networks, state = load_model(args.evaluate, device)
    check_model_fits(args.evaluate, state, args)
    video_dir = Path(args.evaluate).parent / "videos" if args.capture_video else None
    evaluation = evaluate(*networks, args.env_id, args.env_kwargs, args.eval_episodes, eval_seed(args.seed), args.gamma,
                          device, video_dir)
    print(f"{args.env_id}, model {args.evaluate} (trained {state['global_step']} steps)")
    if video_dir is not None and video_dir.is_dir():  # not when video was skipped
        print(f"videos in {video_dir}")
    return report_eval(*evaluation)
