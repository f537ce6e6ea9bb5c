from prunelab.cli import entry

entry()
