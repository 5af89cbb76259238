//! The two S3 requests `object_store` does not make, signed with its own SigV4 signer: a
//! server-side copy that sets new metadata (`x-amz-metadata-directive: REPLACE`), and an
//! UploadPart whose body streams as the bytes arrive (`UNSIGNED-PAYLOAD`; object_store buffers a
//! whole part first, which costs a part of memory and loses a whole part more on a crash).

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use http::{HeaderValue, Method, Request, StatusCode, header};
use object_store::ClientOptions;
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};

use super::{S3Config, StoreError};

/// Signs and sends raw requests to the bucket.
pub(super) struct Raw {
    client: HttpClient,
    /// `http(s)://host:port/bucket` (path-style).
    bucket_url: String,
    bucket: String,
    credential: AwsCredential,
    region: String,
    /// For streamed bodies (object_store's client takes only whole ones).
    streaming: reqwest::Client,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("bucket_url", &self.bucket_url)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes a key as S3 wants it in a path: every byte but unreserved ones and `/`.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Raw {
    pub(super) fn new(config: &S3Config, options: &ClientOptions) -> Result<Self, StoreError> {
        let client = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| StoreError::BadDirectory(format!("S3 client: {e}")))?;
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", config.region));
        Ok(Self {
            client,
            bucket_url: format!("{}/{}", endpoint.trim_end_matches('/'), config.bucket),
            bucket: config.bucket.clone(),
            credential: AwsCredential {
                key_id: config.credential.key_id.clone(),
                secret_key: config.credential.secret_key.clone(),
                token: config.credential.token.clone(),
            },
            region: config.region.clone(),
            streaming: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                // Between two reads of the answer; a part's body may take as long as its sender.
                .read_timeout(Duration::from_secs(120))
                .https_only(!config.allow_http)
                .build()
                .map_err(|e| StoreError::BadDirectory(format!("S3 client: {e}")))?,
        })
    }

    /// Uploads part `number` (1-based) of multipart upload `upload_id` of `key`: exactly `len`
    /// bytes, taken from `body` as they come. Returns the part's ETag.
    pub(super) async fn upload_part<B>(
        &self,
        key: &str,
        upload_id: &str,
        number: usize,
        len: u64,
        body: B,
    ) -> Result<String, String>
    where
        B: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let url = format!(
            "{}/{}?partNumber={number}&uploadId={}",
            self.bucket_url,
            encode_key(key),
            encode_key(upload_id).replace('/', "%2F")
        );
        // Signed without its body (which is not here yet): the signature covers the method, the
        // URL and the headers; S3 takes `UNSIGNED-PAYLOAD` over TLS or a trusted network alike.
        let mut signed = Request::builder()
            .method(Method::PUT)
            .uri(&url)
            .body(HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .with_sign_payload(false)
            .try_authorize(&mut signed, None)
            .map_err(|e| format!("S3 signing: {e}"))?;
        let mut headers = signed.headers().clone();
        // An explicit length: the body is sent as is, not in chunked encoding (S3 wants a length).
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        let response = self
            .streaming
            .put(&url)
            .headers(headers)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| format!("part {number}: {e}"))?;
        let status = response.status();
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        match etag {
            Some(etag) if status.is_success() && !text.contains("<Error>") => Ok(etag),
            _ => Err(format!(
                "part {number}: {status}: {}",
                text.chars().take(300).collect::<String>()
            )),
        }
    }

    /// Copies `from` to `to` inside the bucket, giving `to` exactly the metadata `meta`
    /// (`x-amz-meta-NAME: VALUE` for each pair).
    pub(super) async fn copy_with_metadata(
        &self,
        from: &str,
        to: &str,
        meta: &[(&str, String)],
    ) -> Result<(), StoreError> {
        let mut builder = Request::builder()
            .method(Method::PUT)
            .uri(format!("{}/{}", self.bucket_url, encode_key(to)))
            .header(
                "x-amz-copy-source",
                format!("{}/{}", self.bucket, encode_key(from)),
            )
            .header("x-amz-metadata-directive", "REPLACE");
        for (name, value) in meta {
            builder = builder.header(format!("x-amz-meta-{name}"), value);
        }
        let mut request = builder
            .body(HttpRequestBody::empty())
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("S3 signing: {e}"))))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("S3 copy: {e}"))))?;
        let status = response.status();
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("S3 copy: {e}"))))?;
        let text = String::from_utf8_lossy(&body);
        // S3 may answer 200 and put the error in the body.
        if status != StatusCode::OK || text.contains("<Error>") {
            if status == StatusCode::NOT_FOUND {
                return Err(StoreError::NotFound(from.to_owned()));
            }
            return Err(StoreError::Io(std::io::Error::other(format!(
                "S3 copy of {from} to {to}: {status}: {}",
                text.chars().take(300).collect::<String>()
            ))));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_encoded_like_s3_paths() {
        assert_eq!(super::encode_key("a/b c+d.txt"), "a/b%20c%2Bd.txt");
        assert_eq!(super::encode_key("ü"), "%C3%BC");
    }
}
