//! `runtime.v1alpha2` support: kubelets before 1.23 (and old crictl) speak the same
//! messages under the older package name, so requests are re-routed to the v1 services by
//! rewriting the gRPC path, as containerd 1.6 serves both.
//! Runs in cairnd.

use std::task::{Context, Poll};

const ALPHA: &str = "/runtime.v1alpha2.";
const V1: &str = "/runtime.v1.";

/// Tower layer that rewrites `/runtime.v1alpha2.*` request paths to `/runtime.v1.*`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlphaLayer;

impl<S> tower::Layer<S> for AlphaLayer {
    type Service = AlphaService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AlphaService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct AlphaService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for AlphaService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(rewritten) = rewrite(req.uri()) {
            *req.uri_mut() = rewritten;
        }
        self.inner.call(req)
    }
}

fn rewrite(uri: &http::Uri) -> Option<http::Uri> {
    let rest = uri.path().strip_prefix(ALPHA)?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = format!("{V1}{rest}").parse().ok();
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_alpha_paths() {
        let u: http::Uri = "http://x/runtime.v1alpha2.ImageService/ListImages"
            .parse()
            .unwrap();
        assert_eq!(
            rewrite(&u).unwrap().path(),
            "/runtime.v1.ImageService/ListImages"
        );
        let u: http::Uri = "http://x/runtime.v1.ImageService/ListImages"
            .parse()
            .unwrap();
        assert!(rewrite(&u).is_none());
    }
}
