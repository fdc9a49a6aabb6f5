"""cc_grpc_library: protobuf + gRPC C++ code from Debian's protoc and grpc_cpp_plugin.

Bazel 4 cannot fetch rules_proto or grpc's own rules offline, so one genrule
runs the system compilers and a cc_library wraps the output. Imports between
.proto files resolve from the workspace root (proto/fabric/nat/v1/x.proto is
imported as "fabric/nat/v1/x.proto" when proto_root = "proto").
"""

def cc_grpc_library(name, srcs, proto_root, grpc = True, deps = [], visibility = None):
    """Generates and compiles C++ messages (and services, if grpc) for srcs.

    Args:
      name: the cc_library's name (messages and services); name + "_messages"
        holds the messages alone.
      srcs: the .proto files, in this package.
      proto_root: path, from the workspace root, that imports are relative to.
      grpc: whether to generate service stubs too.
      deps: other cc_grpc_library targets whose protos these import.
      visibility: of the cc_library.
    """
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    gen_root = "$(GENDIR)/" + proto_root
    cmd = "protoc -I" + proto_root + " --cpp_out=" + gen_root
    if grpc:
        cmd += " --grpc_out=" + gen_root + " --plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin)"
    cmd += " " + " ".join(["$(location " + s + ")" for s in srcs])

    native.genrule(
        name = name + "_gen",
        srcs = srcs + [d + "_srcs" for d in deps],
        outs = outs,
        cmd = cmd,
    )
    native.filegroup(
        name = name + "_srcs",
        srcs = srcs + [d + "_srcs" for d in deps],
        visibility = visibility,
    )
    messages = [o for o in outs if not o.endswith(".grpc.pb.h") and not o.endswith(".grpc.pb.cc")]
    services = [o for o in outs if o not in messages]

    # The messages alone, for a program that speaks the wire format without
    # gRPC's runtime (the CNI plugin, cni/grpc_unary.h).
    native.cc_library(
        name = name + "_messages",
        srcs = [o for o in messages if o.endswith(".cc")],
        hdrs = [o for o in messages if o.endswith(".h")],
        strip_include_prefix = "/" + proto_root,
        deps = [d + "_messages" for d in deps] + ["//third_party:protobuf"],
        visibility = visibility,
    )
    native.cc_library(
        name = name,
        srcs = [o for o in services if o.endswith(".cc")],
        hdrs = [o for o in services if o.endswith(".h")],
        strip_include_prefix = "/" + proto_root,
        deps = deps + [name + "_messages"] + (["//third_party:grpc++"] if grpc else []),
        visibility = visibility,
    )
