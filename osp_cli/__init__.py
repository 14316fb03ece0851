"""The `osp` command line: parses arguments, calls osp_core, prints."""
