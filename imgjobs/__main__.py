from imgjobs.cli import main

raise SystemExit(main())
