{
  "targets": [
    {
      "target_name": "netlink_native",
      "sources": ["netlink_native.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"]
    }
  ]
}
