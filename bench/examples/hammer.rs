use cairn_proto::cri;
use cairn_proto::cri::runtime_service_client::RuntimeServiceClient;
use std::time::Instant;
#[tokio::main]
async fn main() {
    let sock = std::env::args().nth(1).unwrap();
    let n: usize = std::env::args()
        .nth(2)
        .unwrap_or("2000".into())
        .parse()
        .unwrap();
    let ch = cairn_proto::client::unix_channel(std::path::Path::new(&sock))
        .await
        .unwrap();
    let mut rt = RuntimeServiceClient::new(ch);
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        rt.version(cri::VersionRequest::default()).await.unwrap();
        v.push(t.elapsed().as_micros() as u64);
    }
    v.sort();
    println!("median {} us p95 {} us", v[n / 2], v[n * 95 / 100]);
}
