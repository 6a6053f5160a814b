from lamcam.cli import main

raise SystemExit(main())
