//! cairnd through clients that are not cairn's: grpc-go 1.33 (the generation kubelet 1.20
//! and crictl 1.26 link, built from Debian's packages) and gRPC C-core (PyPI's `grpcio`),
//! with CRI bindings generated from the CRI's api.proto. Every `:authority` they send over
//! the unix socket gets through, and a pod's whole life runs through each, as kubelet
//! drives it: v1alpha2 from the Go client (kubelet 1.20 speaks nothing else), v1 from
//! Python.

mod pods_common;

use std::path::Path;

use cairn_tests::clients::{Authority, Client, Library, Reply};
use pods_common::*;
use serde_json::{json, Value};
use tonic::Code;

fn call(client: &Client, socket: &Path, api: &str, method: &str, request: Value) -> Reply {
    client
        .call(socket, api, Authority::Default, method, &request)
        .unwrap()
}

fn ok(client: &Client, socket: &Path, api: &str, method: &str, request: Value) -> Value {
    call(client, socket, api, method, request)
        .ok()
        .unwrap_or_else(|e| panic!("{:?} {api} {method}: {e}", client.library()))
}

#[tokio::test]
async fn every_authority_gets_through() {
    let d = cairn_tests::Cairnd::start("").unwrap();
    let socket = d.socket();
    let cases = [
        (Client::go().unwrap(), Authority::Default),
        (Client::go().unwrap(), Authority::Localhost),
        (Client::python().unwrap(), Authority::Default),
        (Client::python().unwrap(), Authority::Localhost),
        (Client::python().unwrap(), Authority::Empty),
    ];
    for (client, authority) in &cases {
        for api in ["v1", "v1alpha2"] {
            let version = client
                .call(
                    &socket,
                    api,
                    *authority,
                    "RuntimeService/Version",
                    &json!({}),
                )
                .unwrap()
                .ok()
                .unwrap_or_else(|e| panic!("{:?} {authority:?} {api}: {e}", client.library()));
            assert_eq!(version["runtime_name"], "cairn", "{version}");
            assert_eq!(version["version"], "0.1.0", "{version}");
            // A second call on a fresh connection and an image-service call.
            let images = client
                .call(
                    &socket,
                    api,
                    *authority,
                    "ImageService/ListImages",
                    &json!({}),
                )
                .unwrap();
            assert_eq!(
                images,
                Reply::Ok(json!({"images": []})),
                "{:?} {authority:?}",
                client.library()
            );
        }
    }
    // What cairn does not know is a clean gRPC error, not a reset stream.
    let go = Client::go().unwrap();
    let reply = call(
        &go,
        &socket,
        "v1",
        "RuntimeService/ContainerStatus",
        json!({"container_id": "nope"}),
    );
    assert_eq!(reply.code(), Code::NotFound, "{reply:?}");
}

/// A pod with one container, from pull to removal, through one client and one CRI
/// version, checking what kubelet relies on at each step.
async fn pod_lifecycle(client: &Client, api: &str) {
    let node = Node::new().await;
    let socket = node.d.socket();
    let image = node.image.clone();
    let spec = json!({"image": image});
    let rm = call(
        client,
        &socket,
        api,
        "ImageService/RemoveImage",
        json!({"image": spec}),
    );
    assert_eq!(rm, Reply::Ok(json!({})));
    // Absent: an empty status, not an error.
    let st = ok(
        client,
        &socket,
        api,
        "ImageService/ImageStatus",
        json!({"image": spec}),
    );
    assert_eq!(st["image"], Value::Null, "{st}");

    let pulled = ok(
        client,
        &socket,
        api,
        "ImageService/PullImage",
        json!({"image": spec}),
    );
    let image_ref = pulled["image_ref"].as_str().unwrap().to_string();
    let st = ok(
        client,
        &socket,
        api,
        "ImageService/ImageStatus",
        json!({"image": spec}),
    );
    assert_eq!(st["image"]["id"], image_ref.as_str());
    assert_eq!(st["image"]["repo_tags"], json!([image]));
    let list = ok(client, &socket, api, "ImageService/ListImages", json!({}));
    assert_eq!(list["images"][0]["id"], image_ref.as_str());

    let name = format!("clients-{api}");
    let pod_config = json!({
        "metadata": {"name": name, "uid": format!("uid-{name}"), "namespace": "test"},
        "log_directory": node.logs.path().join(&name).display().to_string(),
        "linux": {
            "cgroup_parent": node.cgroups.0,
            "security_context": {"namespace_options": {"pid": "CONTAINER"}}
        }
    });
    // A hostname longer than the kernel takes: InvalidArgument naming it, nothing made.
    let mut long = pod_config.clone();
    long["hostname"] = json!("h".repeat(65));
    let reply = call(
        client,
        &socket,
        api,
        "RuntimeService/RunPodSandbox",
        json!({"config": long}),
    );
    match &reply {
        Reply::Status {
            code: Code::InvalidArgument,
            message,
        } => {
            assert!(message.contains(&"h".repeat(65)), "{message}")
        }
        other => panic!("long hostname: {other:?}"),
    }
    let pods = ok(
        client,
        &socket,
        api,
        "RuntimeService/ListPodSandbox",
        json!({}),
    );
    assert_eq!(pods, json!({"items": []}), "nothing made");

    let pod = ok(
        client,
        &socket,
        api,
        "RuntimeService/RunPodSandbox",
        json!({"config": pod_config}),
    );
    let pod_id = pod["pod_sandbox_id"].as_str().unwrap().to_string();
    let pst = ok(
        client,
        &socket,
        api,
        "RuntimeService/PodSandboxStatus",
        json!({"pod_sandbox_id": pod_id}),
    );
    assert_eq!(pst["status"]["state"], "SANDBOX_READY", "{pst}");

    let container_config = json!({
        "metadata": {"name": "main"},
        "image": spec,
        "command": ["sh", "-c", "echo started; exec sleep 300"],
        "log_path": "main.log",
        "linux": {"resources": {"hugepage_limits": [{"page_size": "2MB", "limit": 0}]}}
    });
    let created = ok(
        client,
        &socket,
        api,
        "RuntimeService/CreateContainer",
        json!({"pod_sandbox_id": pod_id, "config": container_config, "sandbox_config": pod_config}),
    );
    let id = created["container_id"].as_str().unwrap().to_string();
    ok(
        client,
        &socket,
        api,
        "RuntimeService/StartContainer",
        json!({"container_id": id}),
    );
    let st = ok(
        client,
        &socket,
        api,
        "RuntimeService/ContainerStatus",
        json!({"container_id": id}),
    );
    assert_eq!(st["status"]["state"], "CONTAINER_RUNNING", "{st}");
    assert_eq!(st["status"]["image_ref"], image_ref.as_str(), "{st}");
    if api == "v1" {
        assert_eq!(st["status"]["image_id"], image_ref.as_str(), "{st}");
    }

    // No hostname asked for: the node's, as containerd gives.
    let node_hostname = nix_hostname();
    let exec = ok(
        client,
        &socket,
        api,
        "RuntimeService/ExecSync",
        json!({"container_id": id, "cmd": ["hostname"], "timeout": 10}),
    );
    let stdout = base64_decode(exec["stdout"].as_str().unwrap_or(""));
    assert_eq!(stdout.trim(), node_hostname);
    assert_eq!(exec["exit_code"], 0, "{exec}");

    let reply = call(
        client,
        &socket,
        api,
        "RuntimeService/ContainerStatus",
        json!({"container_id": "nope"}),
    );
    assert_eq!(reply.code(), Code::NotFound);

    // Stop and remove, twice, and of what never existed: OK each time (kubelet retries).
    for target in [id.as_str(), id.as_str(), "never-existed"] {
        let stop = json!({"container_id": target, "timeout": 1});
        ok(client, &socket, api, "RuntimeService/StopContainer", stop);
    }
    let st = ok(
        client,
        &socket,
        api,
        "RuntimeService/ContainerStatus",
        json!({"container_id": id}),
    );
    assert_eq!(st["status"]["state"], "CONTAINER_EXITED", "{st}");
    for target in [id.as_str(), id.as_str(), "never-existed"] {
        ok(
            client,
            &socket,
            api,
            "RuntimeService/RemoveContainer",
            json!({"container_id": target}),
        );
    }
    for target in [pod_id.as_str(), pod_id.as_str(), "never-existed"] {
        ok(
            client,
            &socket,
            api,
            "RuntimeService/StopPodSandbox",
            json!({"pod_sandbox_id": target}),
        );
    }
    for target in [pod_id.as_str(), pod_id.as_str(), "never-existed"] {
        ok(
            client,
            &socket,
            api,
            "RuntimeService/RemovePodSandbox",
            json!({"pod_sandbox_id": target}),
        );
    }
    for _ in 0..2 {
        ok(
            client,
            &socket,
            api,
            "ImageService/RemoveImage",
            json!({"image": spec}),
        );
    }
    let images = ok(client, &socket, api, "ImageService/ListImages", json!({}));
    assert_eq!(images, json!({"images": []}));
    // What assert_clean expects: the image back, and nothing else.
    ok(
        client,
        &socket,
        api,
        "ImageService/PullImage",
        json!({"image": spec}),
    );
    assert_clean(&node);
}

#[tokio::test]
async fn a_pod_lives_and_goes_through_grpc_go_on_v1alpha2() {
    pod_lifecycle(&Client::go().unwrap(), "v1alpha2").await;
}

#[tokio::test]
async fn a_pod_lives_and_goes_through_grpc_c_core_on_v1() {
    let client = Client::python().unwrap();
    assert_eq!(client.library(), Library::CCore);
    pod_lifecycle(&client, "v1").await;
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// protobuf's JSON form carries bytes as base64.
fn base64_decode(s: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    String::from_utf8(bytes).unwrap()
}
