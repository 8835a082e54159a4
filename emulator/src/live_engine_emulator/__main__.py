from live_engine_emulator.cli import main

raise SystemExit(main())
