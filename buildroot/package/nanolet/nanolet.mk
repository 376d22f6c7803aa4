################################################################################
#
# nanolet
#
################################################################################

NANOLET_VERSION = 0.1.0
# Built from this checkout: the external tree lives in buildroot/ of the repository.
NANOLET_SITE = $(BR2_EXTERNAL_NANOLET_PATH)/..
NANOLET_SITE_METHOD = local
NANOLET_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = \
	--exclude target --exclude buildroot --exclude qemu-tests --exclude images/out
NANOLET_LICENSE = Apache-2.0

# Buildroot's cargo-package sets its own release profile (opt-level, LTO...) through the
# environment, which overrides Cargo.toml's [profile.release]: restore nanolet's size profile.
NANOLET_CARGO_ENV = \
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
	CARGO_PROFILE_RELEASE_LTO=fat \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
	CARGO_PROFILE_RELEASE_PANIC=abort

NANOLET_FEATURES = $(if $(BR2_PACKAGE_NANOLET_TLS),tls)
NANOLET_CARGO_BUILD_OPTS = --no-default-features \
	$(if $(NANOLET_FEATURES),--features $(subst $(space),$(comma),$(NANOLET_FEATURES)))
NANOLET_CARGO_INSTALL_OPTS = $(NANOLET_CARGO_BUILD_OPTS)

define NANOLET_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(NANOLET_PKGDIR)/S60nanolet \
		$(TARGET_DIR)/etc/init.d/S60nanolet
	mkdir -p $(TARGET_DIR)/etc/default $(TARGET_DIR)/etc/nanolet/manifests \
		$(TARGET_DIR)/etc/nanolet/images
	printf 'NANOLET_STOP_TIMEOUT=%s\n' $(BR2_PACKAGE_NANOLET_STOP_TIMEOUT) \
		> $(TARGET_DIR)/etc/default/nanolet
endef

# What nanolet and runc need from the kernel (the same list, with comments, is
# board/nanolet/linux.fragment, used by the nanolet_qemu_* defconfigs).
define NANOLET_LINUX_CONFIG_FIXUPS
	$(call KCONFIG_ENABLE_OPT,CONFIG_NAMESPACES)
	$(call KCONFIG_ENABLE_OPT,CONFIG_UTS_NS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_IPC_NS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_PID_NS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_NET_NS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CGROUPS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_MEMCG)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CGROUP_PIDS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CGROUP_SCHED)
	$(call KCONFIG_ENABLE_OPT,CONFIG_FAIR_GROUP_SCHED)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CFS_BANDWIDTH)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CPUSETS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_BLK_CGROUP)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CGROUP_FREEZER)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CGROUP_DEVICE)
	$(call KCONFIG_ENABLE_OPT,CONFIG_CGROUP_BPF)
	$(call KCONFIG_ENABLE_OPT,CONFIG_BPF_SYSCALL)
	$(call KCONFIG_ENABLE_OPT,CONFIG_SECCOMP)
	$(call KCONFIG_ENABLE_OPT,CONFIG_SECCOMP_FILTER)
	$(call KCONFIG_ENABLE_OPT,CONFIG_DEVTMPFS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_TMPFS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_OVERLAY_FS)
	$(call KCONFIG_ENABLE_OPT,CONFIG_INOTIFY_USER)
	$(call KCONFIG_ENABLE_OPT,CONFIG_POSIX_MQUEUE)
	$(if $(BR2_PACKAGE_NANOLET_POD_NETWORKING),
		$(call KCONFIG_ENABLE_OPT,CONFIG_VETH)
		$(call KCONFIG_ENABLE_OPT,CONFIG_BRIDGE)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NETFILTER)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NF_CONNTRACK)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NF_NAT)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NF_TABLES)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NF_TABLES_INET)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NFT_NAT)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NFT_CT)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NFT_NUMGEN)
		$(call KCONFIG_ENABLE_OPT,CONFIG_NFT_MASQ)
	)
endef

$(eval $(cargo-package))
