//! A private CA and a certificate it signed for localhost and 127.0.0.1, made fresh per test
//! (rcgen), for OTLP receivers that speak TLS.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

pub struct TestPki {
    /// The CA's certificate, PEM, as pyusdt is given it (OTEL_EXPORTER_OTLP_CERTIFICATE).
    pub ca_file: PathBuf,
    pub server_cert_pem: String,
    pub server_cert_der: Vec<u8>,
    pub server_key_pem: String,
    pub server_key_der: Vec<u8>,
}

pub fn pki(dir: &Path) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pyusdt test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "pyusdt test collector");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();

    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    TestPki {
        ca_file,
        server_cert_pem: cert.pem(),
        server_cert_der: cert.der().to_vec(),
        server_key_pem: key.serialize_pem(),
        server_key_der: key.serialize_der(),
    }
}
