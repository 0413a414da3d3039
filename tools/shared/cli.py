def tyro_cli(argv: list[str] | None, **kwargs) -> Args:
    """tyro.cli, its parse error (boxed or plain: a wrong type, an unknown flag, a missing value) as one line."""
    import io

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(Args, args=argv, **kwargs)
    except SystemExit as e:
        if not e.code:  # --help
            raise
        paragraphs = [[]]  # tyro's message: a title, then paragraphs between rules, boxed or not
        for line in captured.getvalue().splitlines():
            line = line.strip("│ ")
            if line.startswith(("╭", "╰")) or set(line) <= set("─-"):  # the box's edges, rules, blanks
                if paragraphs[-1]:
                    paragraphs.append([])
                continue
            paragraphs[-1].append(line)
        boxed = "╭" in captured.getvalue()  # a box holds the title in its top edge, else it comes first
        message = " ".join(paragraphs[0 if boxed or len(paragraphs) == 1 else 1]).rstrip(".")
        raise UsageError(f"{message or captured.getvalue().strip()}; see --help") from None
    sys.stderr.write(captured.getvalue())  # anything else tyro said
    return args


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line. With --resume or --evaluate the saved run's settings are the defaults, so
    `--resume runs/x/checkpoint.pt` alone goes on with the same experiment; a flag beside it overrides."""
    args = tyro_cli(argv)
    saved_from = args.resume or args.evaluate
    if saved_from and Path(saved_from).is_file():
        try:
            saved = torch.load(saved_from, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 (unreadable, not a torch file, or objects weights_only refuses)
            saved = None
        if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict) or "algorithm" not in saved:
            raise UsageError(f"cannot read {saved_from}: not a model.pt or checkpoint.pt saved by these scripts")
        if saved["algorithm"] != ALGORITHM:
            other, flag = saved["algorithm"], "--resume" if args.resume else "--evaluate"
            raise UsageError(f"{saved_from} was saved by {other}.py, not {ALGORITHM}.py; use python {other}.py "
                             f"{flag} {saved_from}")
        saved = {k: v for k, v in saved["args"].items() if k in {f.name for f in fields(Args)}}
        args = tyro_cli(argv, default=Args(**saved | {"resume": args.resume, "evaluate": args.evaluate}))
    return args


def main(argv: list[str] | None = None) -> None:
    import warnings  # numpy's overflow warnings from acting on diverging weights: the divergence check says it

    warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning, __name__)
    try:
        args = parse_args(argv)
        if args.evaluate:
            check_args(args)
            run_evaluation(args)
        else:
            train(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("\ninterrupted; checkpoints and logs written so far are complete", file=sys.stderr)
        sys.exit(130)
    except OSError as e:  # the last resort for the file system's errors: one line too
        print(f"error: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
