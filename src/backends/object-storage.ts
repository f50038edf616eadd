/**
 * Object-storage backends `s3` and `oss` (spec rafs-v6.md §3.5): a blob is the object
 * `object_prefix + blob_id` of bucket `bucket_name`, read with `GET` + `Range: bytes=start-end`.
 *
 * - `s3`: any S3-compatible service. Path-style addressing, as nydusd does:
 *   `{scheme}://{endpoint}/{bucket}/{key}` (endpoint default `s3.amazonaws.com`; for AWS give the
 *   regional endpoint, e.g. `s3.eu-west-1.amazonaws.com`). Requests are signed with AWS Signature
 *   Version 4 (HMAC-SHA256, service `s3`, the configured `region`; signed headers host, range,
 *   x-amz-content-sha256 = SHA-256 of the empty payload, x-amz-date), implemented here with
 *   node:crypto.
 * - `oss`: Aliyun OSS. Virtual-hosted addressing, as nydusd does (OSS refuses path-style for new
 *   buckets): `{scheme}://{bucket}.{endpoint}/{key}`, signed with the OSS header signature
 *   `Authorization: OSS <access_key_id>:base64(HMAC-SHA1(secret, VERB\n\n\nDate\n/bucket/key))`.
 *
 * With neither `access_key_id` nor `access_key_secret` the requests are anonymous (no
 * Authorization header): public buckets. Both backends go through HttpClient (keep-alive
 * connection reuse, bounded sockets per host), retry retryable failures `retry_limit` times
 * (withRetries, re-signing each attempt), and turn the service's XML error (`<Code>`,
 * `<Message>`) into the error message.
 */
import * as crypto from 'node:crypto';
import { BlobBackend } from '../daemon/interfaces';
import { OssBackendConfig, S3BackendConfig } from '../daemon/config';
import { NydusError } from '../errors';
import { HttpClient, HttpReply, HttpTuning, backendError, checkRangeArgs, checkRangeResponse, clientOptionsFrom, headerValue, isRetryableStatus, rangeHeader, rangeLimits, redactUrl, withRetries } from './http';

export const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
export const S3_DEFAULT_ENDPOINT = 's3.amazonaws.com';

export interface ObjectStorageTuning extends HttpTuning {
  /** the clock used for signatures (tests) */
  now?: () => Date;
}

// ------------------------------------------------------------------------------------------------
// AWS Signature Version 4

/** RFC 3986 percent-encoding as SigV4 wants it: everything but A-Z a-z 0-9 - _ . ~ */
export function awsUriEncode(s: string, keepSlash = false): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-_.~]/.test(c) || (keepSlash && c === '/')) out += c;
    else out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** `20130524T000000Z` */
export function amzDate(d: Date): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

export interface SigV4Request {
  method: string;
  /** the URL as sent; its pathname must already be in its final (percent-encoded) form */
  url: URL;
  /** headers to sign besides host and x-amz-date (any case); all of them are signed */
  headers: Record<string, string>;
  /** hex SHA-256 of the payload (or UNSIGNED-PAYLOAD) */
  payloadHash: string;
  region: string;
  service: string;
  accessKeyId: string;
  secretAccessKey: string;
  date: Date;
}

export interface SigV4Result {
  /** the headers to send in addition to the request's own: authorization, x-amz-date */
  headers: { authorization: string; 'x-amz-date': string };
  canonicalRequest: string;
  stringToSign: string;
  signature: string;
  signedHeaders: string;
}

/** query string in SigV4 canonical form: each name and value encoded, sorted by name then value */
function canonicalQuery(u: URL): string {
  const pairs: Array<[string, string]> = [];
  const raw = u.search.startsWith('?') ? u.search.slice(1) : u.search;
  if (raw === '') return '';
  for (const part of raw.split('&')) {
    if (part === '') continue;
    const i = part.indexOf('=');
    const k = decodeURIComponent((i < 0 ? part : part.slice(0, i)).replace(/\+/g, ' '));
    const v = i < 0 ? '' : decodeURIComponent(part.slice(i + 1).replace(/\+/g, ' '));
    pairs.push([awsUriEncode(k), awsUriEncode(v)]);
  }
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

const hmac = (key: crypto.BinaryLike | crypto.KeyObject, data: string): Buffer => crypto.createHmac('sha256', key).update(data, 'utf8').digest();

/**
 * Sign a request with AWS Signature Version 4 (header form). The canonical URI is the URL's
 * pathname as given (S3 style: no re-normalization, no double encoding), the host header is the
 * URL's host (what undici sends).
 */
export function signV4(r: SigV4Request): SigV4Result {
  const xAmzDate = amzDate(r.date);
  const day = xAmzDate.slice(0, 8);
  const headers = new Map<string, string>();
  for (const [k, v] of Object.entries(r.headers)) {
    const name = k.toLowerCase();
    if (name === 'authorization') continue;
    headers.set(name, v.trim().replace(/\s+/g, ' '));
  }
  headers.set('host', r.url.host);
  headers.set('x-amz-date', xAmzDate);
  const names = [...headers.keys()].sort();
  const signedHeaders = names.join(';');
  const canonicalHeaders = names.map((n) => `${n}:${headers.get(n)}\n`).join('');
  const canonicalRequest = [r.method.toUpperCase(), r.url.pathname || '/', canonicalQuery(r.url), canonicalHeaders, signedHeaders, r.payloadHash].join('\n');
  const scope = `${day}/${r.region}/${r.service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', xAmzDate, scope, crypto.createHash('sha256').update(canonicalRequest, 'utf8').digest('hex')].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${r.secretAccessKey}`, day), r.region), r.service), 'aws4_request');
  const signature = crypto.createHmac('sha256', key).update(stringToSign, 'utf8').digest('hex');
  return {
    headers: {
      authorization: `AWS4-HMAC-SHA256 Credential=${r.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`,
      'x-amz-date': xAmzDate,
    },
    canonicalRequest,
    stringToSign,
    signature,
    signedHeaders,
  };
}

// ------------------------------------------------------------------------------------------------
// Aliyun OSS header signature

export interface OssSignRequest {
  method: string;
  contentMd5?: string;
  contentType?: string;
  /** RFC 1123 date, also sent as the Date header */
  date: string;
  /** all request headers; the x-oss-* ones are signed */
  headers?: Record<string, string>;
  /** `/bucket/object` (object key not percent-encoded), plus signed sub-resources if any */
  resource: string;
  accessKeyId: string;
  accessKeySecret: string;
}

/**
 * `OSS <id>:<base64 HMAC-SHA1>` over VERB, Content-MD5, Content-Type, Date, the x-oss-* headers
 * (lower-cased, sorted, `name:value\n` each) and the canonical resource.
 */
export function signOss(r: OssSignRequest): { authorization: string; stringToSign: string; signature: string } {
  const oss = new Map<string, string[]>();
  for (const [k, v] of Object.entries(r.headers ?? {})) {
    const name = k.toLowerCase();
    if (!name.startsWith('x-oss-')) continue;
    oss.set(name, [...(oss.get(name) ?? []), v.trim().replace(/\s+/g, ' ')]);
  }
  const canonicalHeaders = [...oss.keys()]
    .sort()
    .map((n) => `${n}:${oss.get(n)!.join(',')}\n`)
    .join('');
  const stringToSign = `${r.method.toUpperCase()}\n${r.contentMd5 ?? ''}\n${r.contentType ?? ''}\n${r.date}\n${canonicalHeaders}${r.resource}`;
  const signature = crypto.createHmac('sha1', r.accessKeySecret).update(stringToSign, 'utf8').digest('base64');
  return { authorization: `OSS ${r.accessKeyId}:${signature}`, stringToSign, signature };
}

// ------------------------------------------------------------------------------------------------
// backends

/** The `<Code>` and `<Message>` of an S3 / OSS XML error body, if any. */
export function objectStorageError(body: Buffer): { code?: string; message?: string } {
  const s = body.toString('utf8');
  const code = /<Code>([^<]*)<\/Code>/.exec(s)?.[1];
  const message = /<Message>([^<]*)<\/Message>/.exec(s)?.[1];
  return { code, message };
}

/** error codes worth retrying even when the status alone would not say so */
const RETRYABLE_CODES = new Set(['SlowDown', 'RequestTimeout', 'InternalError', 'ServiceUnavailable', 'Throttling']);

/** endpoint with an optional scheme prefix (nydusd examples write `https://host`) → [scheme, host] */
function splitEndpoint(endpoint: string, scheme: string): [string, string] {
  const m = /^(https?):\/\/(.*)$/i.exec(endpoint.trim());
  const [s, host] = m ? [m[1].toLowerCase(), m[2]] : [scheme, endpoint.trim()];
  return [s, host.replace(/\/+$/, '')];
}

function checkHost(kind: string, field: string, host: string): void {
  let u: URL;
  try {
    u = new URL(`http://${host}`);
  } catch {
    throw new NydusError('ERR_INVALID_ARGUMENT', `${kind} backend: invalid ${field} ${JSON.stringify(host)}`, { field });
  }
  if (u.pathname !== '/' || u.search || u.username) throw new NydusError('ERR_INVALID_ARGUMENT', `${kind} backend: ${field} must be a host[:port], got ${JSON.stringify(host)}`, { field });
}

abstract class ObjectStorageBackend implements BlobBackend {
  abstract readonly kind: string;
  protected readonly client: HttpClient;
  protected readonly anonymous: boolean;
  protected readonly now: () => Date;

  constructor(kind: 's3' | 'oss', protected readonly cfg: OssBackendConfig, protected readonly tuning: ObjectStorageTuning) {
    if (!cfg.bucket_name) throw new NydusError('ERR_INVALID_ARGUMENT', `${kind} backend needs "bucket_name"`, { field: 'bucket_name' });
    if (/[/\s]/.test(cfg.bucket_name)) throw new NydusError('ERR_INVALID_ARGUMENT', `${kind} backend: invalid bucket_name ${JSON.stringify(cfg.bucket_name)}`, { field: 'bucket_name' });
    if (!cfg.access_key_id !== !cfg.access_key_secret) {
      throw new NydusError('ERR_INVALID_ARGUMENT', `${kind} backend: give both access_key_id and access_key_secret, or neither (anonymous access)`, { field: cfg.access_key_id ? 'access_key_secret' : 'access_key_id' });
    }
    this.anonymous = !cfg.access_key_id;
    this.now = tuning.now ?? (() => new Date());
    this.client = new HttpClient(clientOptionsFrom(cfg, tuning));
  }

  objectKey(blobId: string): string {
    return this.cfg.object_prefix + blobId;
  }

  /** the URL of a blob's object */
  abstract blobUrl(blobId: string): string;
  /** headers (authorization included) of a ranged GET of `url` */
  protected abstract requestHeaders(blobId: string, url: string, range: string): Record<string, string>;

  async readRange(blobId: string, offset: number, length: number): Promise<Buffer> {
    checkRangeArgs(this.kind, blobId, offset, length);
    if (length === 0) return Buffer.alloc(0);
    const url = this.blobUrl(blobId);
    try {
      return await withRetries({ retryLimit: this.cfg.retry_limit, backoffBaseMs: this.tuning.backoffBaseMs, backoffMaxMs: this.tuning.backoffMaxMs }, async () => {
        const range = rangeHeader(offset, length);
        const r = await this.client.send(url, this.requestHeaders(blobId, url, range), 'GET', rangeLimits(length, this.tuning.maxWholeBody));
        if (r.status !== 200 && r.status !== 206) throw this.statusError(r, offset, length);
        return checkRangeResponse(r, offset, length, this.tuning.maxWholeBody);
      });
    } catch (e) {
      if (e instanceof NydusError) throw new NydusError(e.code, `${this.kind}: ${e.message}`, { ...e.context, blobId, bucket: this.cfg.bucket_name, key: this.objectKey(blobId) }, { cause: e.cause });
      throw e;
    }
  }

  private statusError(r: HttpReply, offset: number, length: number): NydusError {
    const { code, message } = objectStorageError(r.body);
    const where = `GET ${redactUrl(r.url)} (range ${offset}+${length})`;
    let why: string;
    if (r.status === 404) why = code === 'NoSuchBucket' ? `bucket ${JSON.stringify(this.cfg.bucket_name)} not found` : 'blob not found';
    else if (r.status === 403) why = this.anonymous ? 'access denied (no credentials configured: anonymous request)' : 'access denied (credentials or signature rejected)';
    else if (r.status === 416) why = 'range not satisfiable (beyond the end of the blob?)';
    else if (r.status === 301 || r.status === 307) why = `redirected to ${headerValue(r.headers, 'location') ?? 'another endpoint'} (a bucket in another region? set "endpoint")`;
    else why = 'unexpected status';
    const detail = code ? `: ${code}${message ? `: ${message}` : ''}` : '';
    const retryable = isRetryableStatus(r.status) || (code !== undefined && RETRYABLE_CODES.has(code));
    return backendError(`${where}: HTTP ${r.status} ${why}${detail}`, retryable, { url: redactUrl(r.url), status: r.status, offset, length, ...(code ? { s3Code: code } : {}) });
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}

/** `s3` backend (path-style, SigV4). */
export class S3Backend extends ObjectStorageBackend {
  readonly kind = 's3';
  readonly endpoint: string;
  readonly scheme: string;

  constructor(private readonly s3: S3BackendConfig, tuning: ObjectStorageTuning = {}) {
    super('s3', s3, tuning);
    if (!s3.region) throw new NydusError('ERR_INVALID_ARGUMENT', 's3 backend needs "region"', { field: 'region' });
    [this.scheme, this.endpoint] = splitEndpoint(s3.endpoint || S3_DEFAULT_ENDPOINT, s3.scheme || 'https');
    checkHost('s3', 'endpoint', this.endpoint);
  }

  blobUrl(blobId: string): string {
    return `${this.scheme}://${this.endpoint}/${awsUriEncode(this.cfg.bucket_name)}/${awsUriEncode(this.objectKey(blobId), true)}`;
  }

  protected requestHeaders(_blobId: string, url: string, range: string): Record<string, string> {
    if (this.anonymous) return { range };
    const headers = { range, 'x-amz-content-sha256': EMPTY_SHA256 };
    const signed = signV4({
      method: 'GET',
      url: new URL(url),
      headers,
      payloadHash: EMPTY_SHA256,
      region: this.s3.region,
      service: 's3',
      accessKeyId: this.cfg.access_key_id,
      secretAccessKey: this.cfg.access_key_secret,
      date: this.now(),
    });
    return { ...headers, ...signed.headers };
  }
}

/** `oss` backend (virtual-hosted, OSS signature). */
export class OssBackend extends ObjectStorageBackend {
  readonly kind = 'oss';
  readonly endpoint: string;
  readonly scheme: string;

  constructor(cfg: OssBackendConfig, tuning: ObjectStorageTuning = {}) {
    super('oss', cfg, tuning);
    if (!cfg.endpoint) throw new NydusError('ERR_INVALID_ARGUMENT', 'oss backend needs "endpoint"', { field: 'endpoint' });
    [this.scheme, this.endpoint] = splitEndpoint(cfg.endpoint, cfg.scheme || 'https');
    checkHost('oss', 'endpoint', this.endpoint);
    checkHost('oss', 'bucket_name', `${cfg.bucket_name}.${this.endpoint}`);
  }

  blobUrl(blobId: string): string {
    return `${this.scheme}://${this.cfg.bucket_name}.${this.endpoint}/${awsUriEncode(this.objectKey(blobId), true)}`;
  }

  protected requestHeaders(blobId: string, _url: string, range: string): Record<string, string> {
    if (this.anonymous) return { range };
    const date = this.now().toUTCString();
    const { authorization } = signOss({
      method: 'GET',
      date,
      resource: `/${this.cfg.bucket_name}/${this.objectKey(blobId)}`,
      accessKeyId: this.cfg.access_key_id,
      accessKeySecret: this.cfg.access_key_secret,
    });
    return { range, date, authorization };
  }
}
