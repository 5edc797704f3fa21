//! Who a container runs as and in what environment, as seen from inside it: the CRI
//! user fields against the image's User and /etc/passwd, working dir, env merging, HOME;
//! and the pod's pid namespace modes (shared by the pod, the host's, one per container).

mod pods_common;

use cairn_proto::cri;
use cairn_tests::image::ImageConfig;
use pods_common::*;

fn with_user(
    mut c: cri::ContainerConfig,
    uid: Option<i64>,
    gid: Option<i64>,
    name: &str,
) -> cri::ContainerConfig {
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: uid.map(|value| cri::Int64Value { value }),
            run_as_group: gid.map(|value| cri::Int64Value { value }),
            run_as_username: name.into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// `id`, `pwd` and the environment of a container, from its log.
async fn identity(node: &Node, rt: &mut Rt, pod: &str, config: cri::ContainerConfig) -> String {
    let name = config.metadata.as_ref().unwrap().name.clone();
    let id = node.run_config(rt, pod, config).await;
    let st = wait_exited(rt, &id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let log = std::fs::read_to_string(node.log_of(pod_name(pod), &name)).unwrap();
    // ContainerStatus.user as a line of its own, next to what `id` says inside.
    let user = st.user.and_then(|u| u.linux).map(|u| {
        format!(
            "status-user={}:{}:{:?}",
            u.uid, u.gid, u.supplemental_groups
        )
    });
    log.lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or("").to_string())
        .chain(user)
        .collect::<Vec<_>>()
        .join("\n")
}

fn pod_name(_pod: &str) -> &'static str {
    "users"
}

const SHOW: &[&str] = &["sh", "-c", "id; echo cwd=$(pwd); env | sort"];

#[tokio::test]
async fn users_working_dir_and_env_as_seen_inside() {
    let image = ImageConfig {
        user: "app".into(),
        workdir: "/home/app".into(),
        env: vec![
            cairn_tests::image::DEFAULT_PATH.into(),
            "FOO=image".into(),
            "BAR=image".into(),
        ],
        ..Default::default()
    };
    let node = Node::with(image, "").await;
    let mut rt = node.rt().await;
    let pod = node.run_pod(&mut rt, "users").await;

    // No CRI user: the image's User, looked up in its /etc/passwd; the image's working
    // dir; image env overridden by CRI env key by key; HOME from /etc/passwd.
    let mut c = node.container_config("image-user", SHOW);
    c.envs = vec![
        cri::KeyValue {
            key: "FOO".into(),
            value: "cri".into(),
        },
        cri::KeyValue {
            key: "NEW".into(),
            value: "x=y".into(),
        },
    ];
    let out = identity(&node, &mut rt, &pod, c).await;
    assert!(out.contains("uid=1000(app) gid=1000(app)"), "{out}");
    assert!(out.contains("cwd=/home/app"), "{out}");
    for line in [
        "FOO=cri",
        "BAR=image",
        "NEW=x=y",
        "HOME=/home/app",
        "HOSTNAME=users",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
    }
    assert_eq!(out.lines().filter(|l| l.starts_with("FOO=")).count(), 1);

    // run_as_user wins over the image's User; run_as_group sets the group.
    let c = with_user(node.container_config("uid", SHOW), Some(0), Some(1000), "");
    let out = identity(&node, &mut rt, &pod, c).await;
    assert!(out.contains("uid=0(root) gid=1000(app)"), "{out}");
    assert!(out.contains("status-user=0:1000:"), "{out}");
    assert!(out.lines().any(|l| l == "HOME=/root"), "{out}");

    // run_as_username is looked up in the image's /etc/passwd.
    let c = with_user(node.container_config("name", SHOW), None, None, "nobody");
    let out = identity(&node, &mut rt, &pod, c).await;
    assert!(
        out.contains("uid=65534(nobody) gid=65534(nogroup)"),
        "{out}"
    );

    // A uid the image does not know: gid 0, HOME=/.
    let mut c = with_user(node.container_config("unknown", SHOW), Some(4321), None, "");
    c.working_dir = "/tmp".into();
    let out = identity(&node, &mut rt, &pod, c).await;
    assert!(out.contains("uid=4321 gid=0(root)"), "{out}");
    assert!(out.contains("cwd=/tmp"), "{out}");
    assert!(out.lines().any(|l| l == "HOME=/"), "{out}");

    // A CRI HOME is kept; supplemental groups are added.
    let mut c = with_user(node.container_config("groups", SHOW), Some(1000), None, "");
    c.envs = vec![cri::KeyValue {
        key: "HOME".into(),
        value: "/elsewhere".into(),
    }];
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .supplemental_groups = vec![2000, 65534];
    let out = identity(&node, &mut rt, &pod, c).await;
    assert!(
        out.contains("groups=1000(app),2000,65534(nogroup)"),
        "{out}"
    );
    let status_user = out.lines().find(|l| l.starts_with("status-user=")).unwrap();
    assert!(status_user.starts_with("status-user=1000:1000:"), "{out}");
    assert!(
        status_user.contains("2000") && status_user.contains("65534"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "HOME=/elsewhere"), "{out}");

    // ExecSync runs as the container's user, in its working dir, with its env.
    let id = node.run(&mut rt, &pod, "long", &["sleep", "300"]).await;
    let out = exec_out(&mut rt, &id, &["sh", "-c", "id -u; pwd; echo $FOO $HOME"]).await;
    assert_eq!(out, "1000\n/home/app\nimage /home/app");

    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}

/// `/proc/<pid>/stat` lines seen inside a container: (pid, comm, state, ppid).
async fn procs(rt: &mut Rt, id: &str) -> Vec<(i32, String, String, i32)> {
    let out = exec_out(rt, id, &["sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null"]).await;
    out.lines()
        .filter_map(|l| {
            let (pid, rest) = l.split_once(" (")?;
            let (comm, rest) = rest.rsplit_once(") ")?;
            let mut f = rest.split(' ');
            let state = f.next()?.to_string();
            let ppid = f.next()?.parse().ok()?;
            Some((pid.parse().ok()?, comm.to_string(), state, ppid))
        })
        .collect()
}

#[tokio::test]
async fn pid_namespace_shared_by_the_pod_host_or_per_container() {
    let node = Node::new().await;
    let mut rt = node.rt().await;

    // POD: the containers see each other's processes; pid 1 is the pod's holder, which
    // reaps orphans.
    let config = node.pod_config_pid("shared", cri::NamespaceMode::Pod);
    let pod = node.run_pod_with(&mut rt, config, "").await;
    let a = node.run(&mut rt, &pod, "a", &["sleep", "300"]).await;
    let b = node
        .run(&mut rt, &pod, "b", &["sh", "-c", "(sleep 1 &); sleep 302"])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let seen = procs(&mut rt, &b).await;
    assert!(seen.iter().any(|p| p.0 == 1 && p.1 == "pause"), "{seen:?}");
    assert!(seen.iter().any(|p| p.1 == "sleep" && p.0 != 1), "{seen:?}");
    assert!(seen.iter().all(|p| p.2 != "Z"), "a zombie: {seen:?}");
    let from_a = procs(&mut rt, &a).await;
    let pids = |v: &[(i32, String, String, i32)]| {
        let mut p: Vec<i32> = v.iter().filter(|p| p.1 == "sleep").map(|p| p.0).collect();
        p.sort();
        p
    };
    assert_eq!(pids(&seen), pids(&from_a), "both see the same processes");
    assert!(pids(&seen).len() >= 2, "{seen:?}");
    // Signals have their normal effect on a container's init that is not pid 1.
    rt.stop_container(cri::StopContainerRequest {
        container_id: a.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert_eq!(status(&mut rt, &a).await.exit_code, 128 + 15);
    // A container's init that exits leaves nothing running behind it.
    let f = node
        .run(&mut rt, &pod, "f", &["sh", "-c", "sleep 303 & exit 3"])
        .await;
    assert_eq!(wait_exited(&mut rt, &f).await.exit_code, 3);
    let procs_file = node.cgroup_dir("pids", &f).join("cgroup.procs");
    let left = std::fs::read_to_string(&procs_file).unwrap_or_default();
    assert!(
        left.trim().is_empty(),
        "left in {}: {left}",
        procs_file.display()
    );
    remove_pod(&mut rt, &pod).await;

    // NODE: the host's processes are visible, cairnd's among them.
    let config = node.pod_config_pid("host", cri::NamespaceMode::Node);
    let pod = node.run_pod_with(&mut rt, config, "").await;
    let c = node.run(&mut rt, &pod, "c", &["sleep", "300"]).await;
    let cairnd = format!("/proc/{}", node.d.pid());
    assert_eq!(
        exec(&mut rt, &c, &["test", "-d", &cairnd]).await.exit_code,
        0
    );
    remove_pod(&mut rt, &pod).await;

    // CONTAINER: each container is pid 1 of its own namespace and sees only itself.
    let pod = node.run_pod(&mut rt, "own").await;
    let d = node.run(&mut rt, &pod, "d", &["sleep", "300"]).await;
    let e = node.run(&mut rt, &pod, "e", &["sleep", "301"]).await;
    for id in [&d, &e] {
        let seen = procs(&mut rt, id).await;
        let sleeps: Vec<_> = seen.iter().filter(|p| p.1 == "sleep").collect();
        assert_eq!(sleeps.len(), 1, "{seen:?}");
        assert_eq!(sleeps[0].0, 1, "{seen:?}");
    }
    remove_pod(&mut rt, &pod).await;
    assert_clean(&node);
}
