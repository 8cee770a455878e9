//! A small CRI client (Kubernetes' `runtime.v1.RuntimeService` over gRPC, generated from
//! the vendored `proto/runtime/v1/api.proto`) that makes the calls the kubelet makes, with a
//! blocking interface for the tests.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("runtime.v1");
}

use pb::runtime_service_client::RuntimeServiceClient;

/// A pod the kubelet would run: its metadata and port mappings.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// (container port, host port), TCP.
    pub port_mappings: Vec<(u16, u16)>,
    /// In the node's network namespace (`hostNetwork: true`): no CNI call.
    pub host_network: bool,
    /// The pod's annotations (`kubernetes.io/ingress-bandwidth`, ...).
    pub annotations: Vec<(String, String)>,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            port_mappings: Vec::new(),
            host_network: false,
            annotations: Vec::new(),
        }
    }

    pub fn config(&self, log_dir: &Path) -> pb::PodSandboxConfig {
        pb::PodSandboxConfig {
            metadata: Some(pb::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            // The kubelet sets none for a pod on the node's network (it shares the node's).
            hostname: match self.host_network {
                true => String::new(),
                false => self.name.clone(),
            },
            log_directory: log_dir.join(&self.uid).display().to_string(),
            annotations: self.annotations.iter().cloned().collect(),
            port_mappings: self
                .port_mappings
                .iter()
                .map(|&(container, host)| pb::PortMapping {
                    protocol: pb::Protocol::Tcp as i32,
                    container_port: container.into(),
                    host_port: host.into(),
                    host_ip: String::new(),
                })
                .collect(),
            linux: Some(pb::LinuxPodSandboxConfig {
                security_context: self.host_network.then(|| pb::LinuxSandboxSecurityContext {
                    namespace_options: Some(pb::NamespaceOption {
                        network: pb::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// A container to create in a pod: its image, command and host directories mounted in it.
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub command: Vec<String>,
    /// (host path, container path).
    pub mounts: Vec<(std::path::PathBuf, String)>,
}

/// What `ExecSync` returned.
#[derive(Debug)]
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI socket `socket` (a containerd's gRPC address).
    pub fn connect(socket: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let path = socket.to_owned();
        let channel = rt.block_on(async move {
            // The URI is unused: every connection goes to the socket.
            Endpoint::from_static("http://[::]:0")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .expect("connect to the CRI socket")
        });
        Self {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// The runtime's name and version, once its CRI service answers.
    pub fn version(&mut self) -> Result<pb::VersionResponse, tonic::Status> {
        let req = pb::VersionRequest {
            version: "v1".into(),
        };
        self.rt
            .block_on(self.client.version(req))
            .map(|r| r.into_inner())
    }

    /// RunPodSandbox: the pod's sandbox with its network (the CNI ADD happens here).
    pub fn run_pod(&mut self, config: &pb::PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = pb::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        self.rt
            .block_on(self.client.run_pod_sandbox(req))
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    /// PodSandboxStatus, verbose (its `info` has the network namespace path).
    pub fn pod_status(&mut self, id: &str) -> Result<pb::PodSandboxStatusResponse, tonic::Status> {
        let req = pb::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        self.rt
            .block_on(self.client.pod_sandbox_status(req))
            .map(|r| r.into_inner())
    }

    /// The pod's addresses as the runtime reports them (what the kubelet puts in the pod's
    /// status): the primary first.
    pub fn pod_ips(&mut self, id: &str) -> Vec<std::net::IpAddr> {
        let status = self.pod_status(id).expect("PodSandboxStatus");
        let net = status.status.and_then(|s| s.network).unwrap_or_default();
        std::iter::once(net.ip)
            .chain(net.additional_ips.into_iter().map(|a| a.ip))
            .filter(|ip| !ip.is_empty())
            .map(|ip| ip.parse().expect("an IP address"))
            .collect()
    }

    /// CreateContainer + StartContainer of `spec` in the pod.
    pub fn start_container(
        &mut self,
        pod: &str,
        pod_config: &pb::PodSandboxConfig,
        spec: &ContainerSpec,
    ) -> Result<String, tonic::Status> {
        let config = pb::ContainerConfig {
            metadata: Some(pb::ContainerMetadata {
                name: spec.name.into(),
                attempt: 0,
            }),
            image: Some(pb::ImageSpec {
                image: spec.image.into(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container)| pb::Mount {
                    container_path: container.clone(),
                    host_path: host.display().to_string(),
                    ..Default::default()
                })
                .collect(),
            log_path: format!("{}.log", spec.name),
            linux: Some(pb::LinuxContainerConfig::default()),
            ..Default::default()
        };
        let req = pb::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self
            .rt
            .block_on(self.client.create_container(req))?
            .into_inner()
            .container_id;
        let req = pb::StartContainerRequest {
            container_id: id.clone(),
        };
        self.rt.block_on(self.client.start_container(req))?;
        Ok(id)
    }

    /// The container's state and, once it exited, its exit code.
    pub fn container_state(
        &mut self,
        id: &str,
    ) -> Result<(pb::ContainerState, i32), tonic::Status> {
        let req = pb::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let status = self
            .rt
            .block_on(self.client.container_status(req))?
            .into_inner()
            .status
            .unwrap_or_default();
        Ok((status.state(), status.exit_code))
    }

    /// ExecSync: runs `cmd` in the container and waits up to `timeout`.
    pub fn exec(
        &mut self,
        container: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<Exec, tonic::Status> {
        let req = pb::ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        let r = self.rt.block_on(self.client.exec_sync(req))?.into_inner();
        Ok(Exec {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    /// StopPodSandbox: stops its containers and tears its network down (the CNI DEL).
    pub fn stop_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = pb::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.client.stop_pod_sandbox(req))
            .map(drop)
    }

    /// RemovePodSandbox: removes it and its containers.
    pub fn remove_pod(&mut self, id: &str) -> Result<(), tonic::Status> {
        let req = pb::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt
            .block_on(self.client.remove_pod_sandbox(req))
            .map(drop)
    }

    /// The ids of every pod sandbox the runtime has.
    pub fn pods(&mut self) -> Result<Vec<String>, tonic::Status> {
        let req = pb::ListPodSandboxRequest { filter: None };
        let r = self.rt.block_on(self.client.list_pod_sandbox(req))?;
        Ok(r.into_inner().items.into_iter().map(|p| p.id).collect())
    }
}
