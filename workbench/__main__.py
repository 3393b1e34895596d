from workbench.cli import main

# Guarded: worker processes started with "spawn" (sweeps, data-parallel training) import this module as
# __mp_main__ and must not run the command line again.
if __name__ == "__main__":
    raise SystemExit(main())
