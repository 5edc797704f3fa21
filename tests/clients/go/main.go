// cri-client: a CRI client built the way kubelet 1.20 and crictl 1.26 are, from grpc-go
// 1.33 (Debian's golang-google-grpc-dev) and golang/protobuf 1.3 (golang-goprotobuf-dev),
// with bindings generated from the CRI's api.proto by protoc-gen-go. cairn's tests run it
// as an independent client of cairnd's socket (tests/tests/clients.rs).
//
// Usage: cri-client -endpoint /path/cri.sock [-api v1|v1alpha2] [-authority MODE]
//
//	SERVICE/METHOD [JSON-REQUEST]
//
// It calls one unary method (e.g. RuntimeService/Version), the request given as the JSON
// form of <Method>Request, and prints the response as JSON (field names as in the
// .proto, fields at their default values included) on stdout. A gRPC error is printed as "code=<number> name=<Code>
// message=<text>" on stdout and exits with status 3; any other failure exits with 1.
//
// MODE is the HTTP/2 :authority the client sends: "path" (the socket path, as kubelet
// before 1.27 and crictl 1.26 send: they dial the path with a custom dialer) or
// "localhost" (as newer grpc-go does).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/golang/protobuf/jsonpb"
	"github.com/golang/protobuf/proto"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	_ "k8s.io/cri-api/pkg/apis/runtime/v1"
	_ "k8s.io/cri-api/pkg/apis/runtime/v1alpha2"
)

func main() {
	endpoint := flag.String("endpoint", "", "path of the CRI unix socket")
	api := flag.String("api", "v1", "CRI package: v1 or v1alpha2")
	authority := flag.String("authority", "path", "the :authority sent: path or localhost")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the call")
	flag.Parse()
	if *endpoint == "" || flag.NArg() < 1 || flag.NArg() > 2 {
		fail("usage: cri-client -endpoint SOCKET [-api v1|v1alpha2] SERVICE/METHOD [JSON]")
	}
	method := flag.Arg(0)
	body := "{}"
	if flag.NArg() == 2 {
		body = flag.Arg(1)
	}
	parts := strings.Split(method, "/")
	if len(parts) != 2 {
		fail("method must be SERVICE/METHOD, e.g. RuntimeService/Version")
	}
	pkg := "runtime." + *api
	req := newMessage(pkg + "." + parts[1] + "Request")
	resp := newMessage(pkg + "." + parts[1] + "Response")
	if err := jsonpb.UnmarshalString(body, req); err != nil {
		fail("request: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	conn, err := dial(ctx, *endpoint, *authority)
	if err != nil {
		fail("dial %s: %v", *endpoint, err)
	}
	defer conn.Close()
	err = conn.Invoke(ctx, "/"+pkg+"."+method, req, resp)
	if err != nil {
		if s, ok := status.FromError(err); ok {
			fmt.Printf("code=%d name=%s message=%s\n", s.Code(), s.Code(), s.Message())
			os.Exit(3)
		}
		fail("call: %v", err)
	}
	out, err := (&jsonpb.Marshaler{OrigName: true, EmitDefaults: true}).MarshalToString(resp)
	if err != nil {
		fail("response: %v", err)
	}
	fmt.Println(out)
}

// dial connects as kubelet 1.20's remote runtime client does: the socket path as the
// target, a unix dialer, no TLS, blocking until connected.
func dial(ctx context.Context, path, authority string) (*grpc.ClientConn, error) {
	dialer := func(ctx context.Context, addr string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}
	opts := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(dialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 * 1024 * 1024)),
	}
	switch authority {
	case "path":
	case "localhost":
		opts = append(opts, grpc.WithAuthority("localhost"))
	default:
		fail("unknown -authority %q", authority)
	}
	return grpc.DialContext(ctx, path, opts...)
}

func newMessage(name string) proto.Message {
	t := proto.MessageType(name)
	if t == nil {
		fail("no message %s in the CRI bindings", name)
	}
	return reflect.New(t.Elem()).Interface().(proto.Message)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "cri-client: "+format+"\n", args...)
	os.Exit(1)
}
