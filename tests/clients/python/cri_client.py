#!/usr/bin/env python3
"""cri-client (Python): a CRI client on gRPC C-core, through PyPI's `grpcio`, with stubs
generated from the CRI's api.proto by `grpcio-tools`. cairn's tests run it as an
independent client of cairnd's socket (tests/tests/clients.rs).

Usage: cri_client.py --stubs DIR --endpoint SOCKET [--api v1|v1alpha2]
                     [--authority default|localhost|empty] SERVICE/METHOD [JSON]

It calls one unary method (e.g. RuntimeService/Version), the request given as the JSON
form of <Method>Request, and prints the response as JSON (field names as in the .proto).
Fields at their default values are printed too. A gRPC error is printed as "code=<number> name=<NAME> message=<text>" and exits with 3.

--authority: what the HTTP/2 :authority is. "default" leaves it to C-core (the
%-encoded socket path since grpcio 1.57), "localhost" and "empty" set
grpc.default_authority.
"""

import argparse
import importlib
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stubs", required=True, help="dir of the generated <api>_pb2 modules")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--api", default="v1", choices=["v1", "v1alpha2"])
    p.add_argument("--authority", default="default", choices=["default", "localhost", "empty"])
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("method")
    p.add_argument("request", nargs="?", default="{}")
    args = p.parse_args()

    sys.path.insert(0, args.stubs)
    import grpc
    from google.protobuf import json_format

    pb2 = importlib.import_module(f"{args.api}_pb2")
    service, method = args.method.split("/")
    request = json_format.Parse(args.request, getattr(pb2, f"{method}Request")())
    response_type = getattr(pb2, f"{method}Response")

    options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    if args.authority == "localhost":
        options.append(("grpc.default_authority", "localhost"))
    elif args.authority == "empty":
        options.append(("grpc.default_authority", ""))
    with grpc.insecure_channel(f"unix:{args.endpoint}", options=options) as channel:
        call = channel.unary_unary(
            f"/runtime.{args.api}.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        try:
            response = call(request, timeout=args.timeout)
        except grpc.RpcError as e:
            code = e.code()
            print(f"code={code.value[0]} name={code.name} message={e.details()}")
            sys.exit(3)
    # Fields at their default values too, as the Go client prints them.
    print(json_format.MessageToJson(
        response,
        preserving_proto_field_name=True,
        indent=None,
        always_print_fields_with_no_presence=True,
    ))


if __name__ == "__main__":
    main()
