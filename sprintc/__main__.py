from sprintc.cli import main

raise SystemExit(main())
