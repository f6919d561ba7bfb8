# nothing to package in the stand-in
