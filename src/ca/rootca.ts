// The cluster root CA: a self-signed ECDSA P-256 certificate (CN swarm-ca). Managers hold its key and
// sign node certificates; workers hold only the certificate, to verify managers.

import {
  createPrivateKey,
  createPublicKey,
  type KeyObject,
  X509Certificate as NodeX509Certificate,
  sign,
} from "node:crypto";
import { CAError } from "./errors.js";
import {
  certificateDer,
  certificatePem,
  keyIdOf,
  type NodeCertFields,
  nodeTbsCertificate,
  subjectNameOf,
} from "./leaf.js";
import { cryptoRandomBytes, type RandomBytes } from "./random.js";
import { rootDigest } from "./token.js";
import {
  type CryptoKey,
  certToPem,
  EC_KEY_PARAMS,
  EC_SIGN_PARAMS,
  generateEcKeyPair,
  privateKeyToPem,
  randomSerialHex,
  subtle,
  x509,
} from "./x509.js";

export const ROOT_CA_CN = "swarm-ca";
const DEFAULT_ROOT_CA_YEARS = 20;
/** Certificates are backdated so that small clock skew between nodes does not make them "not yet valid". */
export const BACKDATE_MS = 60 * 60 * 1000;

export interface RootCAMaterial {
  certPem: string;
  /** PKCS#8 PEM. */
  keyPem: string;
}

export interface CreateRootCAOptions {
  now?: () => Date;
  years?: number;
  randomBytes?: RandomBytes;
}

/** Creates a new self-signed root CA: ECDSA P-256, CN swarm-ca, CA:true (critical), keyCertSign+cRLSign. */
export async function createRootCA(opts: CreateRootCAOptions = {}): Promise<RootCAMaterial> {
  const now = (opts.now ?? (() => new Date()))();
  const years = opts.years ?? DEFAULT_ROOT_CA_YEARS;
  if (!Number.isInteger(years) || years < 1) throw new RangeError(`years must be a positive integer, got ${years}`);
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  const notAfter = new Date(now.getTime());
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + years);

  const keys = await generateEcKeyPair();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialHex(opts.randomBytes ?? cryptoRandomBytes),
    name: [{ CN: [ROOT_CA_CN] }],
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: EC_SIGN_PARAMS,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: certToPem(cert), keyPem: await privateKeyToPem(keys.privateKey) };
}

/** What signs node certificates on the join path: the CA key, its subject (DER) and its key identifier. */
interface LeafSigner {
  key: KeyObject;
  issuerName: Buffer;
  authorityKeyId: Buffer;
}

/** What RootCA.issue needs to sign a certificate. */
export interface IssueParams {
  subject: x509.JsonName | x509.Name;
  publicKey: x509.PublicKey;
  notBefore: Date;
  notAfter: Date;
  serialNumber: string;
  extensions: x509.Extension[];
}

/**
 * A loaded root CA bundle. The first certificate of the bundle is the signing certificate; every
 * certificate in the bundle is trusted when verifying node certificates.
 */
const importedRoots = new Map<string, Promise<RootCA>>();
const MAX_IMPORTED_ROOTS = 4;

export class RootCA {
  /** The PEM bundle exactly as given: digest() and join tokens hash these bytes. */
  readonly certPem: string;
  /** The signing certificate (first of the bundle). */
  readonly cert: x509.X509Certificate;
  readonly #trusted: NodeX509Certificate[];
  readonly #key: CryptoKey | null;
  /** What signs node certificates: the same key as #key, for node:crypto, imported once. */
  readonly #signer: LeafSigner | null;

  private constructor(
    certPem: string,
    cert: x509.X509Certificate,
    trusted: NodeX509Certificate[],
    key: CryptoKey | null,
    signer: LeafSigner | null,
  ) {
    this.certPem = certPem;
    this.cert = cert;
    this.#trusted = trusted;
    this.#key = key;
    this.#signer = signer;
  }

  /**
   * fromPem, remembered: the managers sign every join with the same root, whose key is imported once, not
   * once per certificate. A key that changes (rotation) is a new entry; a few are kept.
   */
  static fromPemCached(certPem: string, keyPem: string): Promise<RootCA> {
    const k = `${certPem}\0${keyPem}`;
    let p = importedRoots.get(k);
    if (!p) {
      p = RootCA.fromPem(certPem, keyPem);
      p.catch(() => importedRoots.delete(k));
      if (importedRoots.size >= MAX_IMPORTED_ROOTS) importedRoots.delete(importedRoots.keys().next().value!);
      importedRoots.set(k, p);
    }
    return p;
  }

  /**
   * Loads a root CA from its PEM bundle and, on managers, its private key (PKCS#8 or SEC1 PEM).
   * Throws CAError "invalid-root-ca" if a certificate is not a CA or the key does not match.
   */
  static async fromPem(certPem: string, keyPem?: string): Promise<RootCA> {
    let blocks: x509.PemStruct[];
    try {
      blocks = x509.PemConverter.decodeWithHeaders(certPem);
    } catch (err) {
      throw new CAError("invalid-root-ca", "the root CA certificate is not valid PEM", { cause: err });
    }
    const certBlocks = blocks.filter((b) => b.type === "CERTIFICATE");
    if (certBlocks.length === 0 || certBlocks.length !== blocks.length) {
      throw new CAError("invalid-root-ca", "the root CA bundle must contain only PEM CERTIFICATE blocks");
    }
    const certs: x509.X509Certificate[] = [];
    const trusted: NodeX509Certificate[] = [];
    for (const block of certBlocks) {
      let cert: x509.X509Certificate;
      let nodeCert: NodeX509Certificate;
      try {
        cert = new x509.X509Certificate(block.rawData);
        nodeCert = new NodeX509Certificate(Buffer.from(block.rawData));
      } catch (err) {
        throw new CAError("invalid-root-ca", "the root CA bundle contains an unreadable certificate", { cause: err });
      }
      const bc = cert.getExtension(x509.BasicConstraintsExtension);
      if (!bc?.ca || !nodeCert.ca) {
        throw new CAError(
          "invalid-root-ca",
          `certificate "${cert.subject}" in the root CA bundle is not a CA certificate`,
        );
      }
      certs.push(cert);
      trusted.push(nodeCert);
    }
    const signing = certs[0] as x509.X509Certificate;

    let key: CryptoKey | null = null;
    let signer: LeafSigner | null = null;
    if (keyPem !== undefined) {
      let priv: KeyObject;
      try {
        priv = createPrivateKey(keyPem);
      } catch (err) {
        throw new CAError("invalid-root-ca", "the root CA key is not a readable PEM private key", { cause: err });
      }
      if (priv.asymmetricKeyType !== "ec" || priv.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
        throw new CAError("invalid-root-ca", "the root CA key must be an ECDSA P-256 key");
      }
      const spki = createPublicKey(priv).export({ type: "spki", format: "der" });
      if (!spki.equals(Buffer.from(signing.publicKey.rawData))) {
        throw new CAError("invalid-root-ca", "the root CA key does not match the root CA certificate");
      }
      const pkcs8 = priv.export({ type: "pkcs8", format: "der" });
      key = await subtle.importKey("pkcs8", pkcs8, EC_KEY_PARAMS, false, ["sign"]);
      const ski = signing.getExtension(x509.SubjectKeyIdentifierExtension);
      signer = {
        key: priv,
        issuerName: subjectNameOf(Buffer.from(signing.rawData)),
        authorityKeyId: ski ? Buffer.from(ski.keyId, "hex") : keyIdOf(spki),
      };
    }
    return new RootCA(certPem, signing, trusted, key, signer);
  }

  /** True on managers: the CA key is loaded and this RootCA can sign. */
  get canSign(): boolean {
    return this.#key !== null;
  }

  get notBefore(): Date {
    return this.cert.notBefore;
  }

  get notAfter(): Date {
    return this.cert.notAfter;
  }

  /** sha256 of the root CA PEM bundle exactly as stored, 64 hex digits. */
  digest(): string {
    return rootDigest(this.certPem);
  }

  /** The certificate of the bundle that issued and signed `leaf`, or null. */
  issuerOf(leaf: NodeX509Certificate): NodeX509Certificate | null {
    for (const root of this.#trusted) {
      if (leaf.checkIssued(root) && leaf.verify(root.publicKey)) return root;
    }
    return null;
  }

  /**
   * Root rotation's cross-signed intermediate: the CA certificate `otherPem` (the new root) issued again by
   * this root. It keeps the new root's subject, public key, key identifier and validity, so a certificate the
   * new key signs chains to either root: directly to the new one, or through this one to the old.
   */
  async crossSign(otherPem: string, randomBytes: RandomBytes = cryptoRandomBytes): Promise<string> {
    if (this.#key === null) {
      throw new CAError("no-ca-key", "This node is not a swarm manager: it does not hold the cluster CA key.");
    }
    let other: x509.X509Certificate;
    try {
      other = new x509.X509Certificate(otherPem);
    } catch (err) {
      throw new CAError("invalid-root-ca", "the new root CA certificate is not a readable certificate", { cause: err });
    }
    if (!other.getExtension(x509.BasicConstraintsExtension)?.ca) {
      throw new CAError("invalid-root-ca", "the new root CA certificate is not a CA certificate");
    }
    const ski =
      other.getExtension(x509.SubjectKeyIdentifierExtension) ??
      (await x509.SubjectKeyIdentifierExtension.create(other.publicKey));
    const cert = await this.issue({
      subject: other.subjectName,
      publicKey: other.publicKey,
      notBefore: other.notBefore,
      notAfter: other.notAfter,
      serialNumber: randomSerialHex(randomBytes),
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        ski,
      ],
    });
    return certToPem(cert);
  }

  /**
   * Signs a node certificate (managers only; used by signNodeCSR): the TBSCertificate written by
   * src/ca/leaf.ts, signed with node:crypto. The same certificate `issue` would make, for a fraction of
   * the CPU.
   */
  signNodeCertificate(fields: NodeCertFields): string {
    const s = this.#signer;
    if (s === null) {
      throw new CAError("no-ca-key", "This node is not a swarm manager: it does not hold the cluster CA key.");
    }
    const tbs = nodeTbsCertificate(fields, s.issuerName, s.authorityKeyId);
    return certificatePem(certificateDer(tbs, sign("sha256", tbs, s.key)));
  }

  /** Signs a certificate with the root key (managers only): the CA's own certificates (cross-signing). */
  async issue(params: IssueParams): Promise<x509.X509Certificate> {
    if (this.#key === null) {
      throw new CAError("no-ca-key", "This node is not a swarm manager: it does not hold the cluster CA key.");
    }
    const ski = this.cert.getExtension(x509.SubjectKeyIdentifierExtension);
    const aki = ski
      ? new x509.AuthorityKeyIdentifierExtension(ski.keyId)
      : await x509.AuthorityKeyIdentifierExtension.create(this.cert.publicKey);
    return x509.X509CertificateGenerator.create({
      serialNumber: params.serialNumber,
      subject: params.subject,
      issuer: this.cert.subjectName,
      notBefore: params.notBefore,
      notAfter: params.notAfter,
      publicKey: params.publicKey,
      signingKey: this.#key,
      signingAlgorithm: EC_SIGN_PARAMS,
      extensions: [...params.extensions, aki],
    });
  }
}
