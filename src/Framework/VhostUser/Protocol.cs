namespace Vism.VhostUser;

/// <summary>Requests a frontend (QEMU) sends to a backend on the main socket
/// (<c>docs/interop/vhost-user.rst</c>, "Front-end message types").</summary>
public enum FrontendRequest : uint
{
    /// <summary>Not a request.</summary>
    None = 0,
    /// <summary>Get the virtio feature bits the backend offers (reply u64).</summary>
    GetFeatures = 1,
    /// <summary>Set the virtio feature bits the frontend accepted (u64).</summary>
    SetFeatures = 2,
    /// <summary>The frontend takes ownership of the session.</summary>
    SetOwner = 3,
    /// <summary>Deprecated session reset.</summary>
    ResetOwner = 4,
    /// <summary>Replace the memory table (up to 8 regions, one fd each).</summary>
    SetMemTable = 5,
    /// <summary>Dirty-log base (LOG_SHMFD).</summary>
    SetLogBase = 6,
    /// <summary>Dirty-log eventfd.</summary>
    SetLogFd = 7,
    /// <summary>Ring size (vring state).</summary>
    SetVringNum = 8,
    /// <summary>Ring addresses (vring address; frontend user addresses).</summary>
    SetVringAddr = 9,
    /// <summary>Next available index to read (vring state).</summary>
    SetVringBase = 10,
    /// <summary>Stop the ring and return its next available index (reply vring state).</summary>
    GetVringBase = 11,
    /// <summary>Kick eventfd of a ring; starts it (u64 index, bit 8 = no fd).</summary>
    SetVringKick = 12,
    /// <summary>Call eventfd of a ring (u64 index, bit 8 = no fd).</summary>
    SetVringCall = 13,
    /// <summary>Error eventfd of a ring (u64 index, bit 8 = no fd).</summary>
    SetVringErr = 14,
    /// <summary>Get the protocol feature bits (reply u64).</summary>
    GetProtocolFeatures = 15,
    /// <summary>Set the protocol feature bits the frontend accepted (u64).</summary>
    SetProtocolFeatures = 16,
    /// <summary>Number of queues the backend supports (reply u64; needs MQ).</summary>
    GetQueueNum = 17,
    /// <summary>Enable or disable a ring (vring state; num = 1 enables).</summary>
    SetVringEnable = 18,
    /// <summary>Net: send a RARP.</summary>
    SendRarp = 19,
    /// <summary>Net: MTU.</summary>
    NetSetMtu = 20,
    /// <summary>The backend-channel socket (one fd; needs BACKEND_REQ).</summary>
    SetBackendReqFd = 21,
    /// <summary>IOTLB message.</summary>
    IotlbMsg = 22,
    /// <summary>Ring endianness (legacy devices).</summary>
    SetVringEndian = 23,
    /// <summary>Read device config space (needs CONFIG; reply has the same size).</summary>
    GetConfig = 24,
    /// <summary>Write device config space (needs CONFIG).</summary>
    SetConfig = 25,
    /// <summary>Crypto: create a session.</summary>
    CreateCryptoSession = 26,
    /// <summary>Crypto: close a session.</summary>
    CloseCryptoSession = 27,
    /// <summary>Postcopy migration.</summary>
    PostcopyAdvise = 28,
    /// <summary>Postcopy migration.</summary>
    PostcopyListen = 29,
    /// <summary>Postcopy migration.</summary>
    PostcopyEnd = 30,
    /// <summary>Inflight buffer tracking.</summary>
    GetInflightFd = 31,
    /// <summary>Inflight buffer tracking.</summary>
    SetInflightFd = 32,
    /// <summary>GPU socket.</summary>
    GpuSetSocket = 33,
    /// <summary>Reset the device (needs RESET_DEVICE).</summary>
    ResetDevice = 34,
    /// <summary>In-band kick (INBAND_NOTIFICATIONS).</summary>
    VringKick = 35,
    /// <summary>Most memory slots the backend takes (reply u64; needs CONFIGURE_MEM_SLOTS).</summary>
    GetMaxMemSlots = 36,
    /// <summary>Add one memory region (one fd; needs CONFIGURE_MEM_SLOTS).</summary>
    AddMemReg = 37,
    /// <summary>Remove one memory region (needs CONFIGURE_MEM_SLOTS).</summary>
    RemMemReg = 38,
    /// <summary>Set the virtio device status (u64; needs STATUS).</summary>
    SetStatus = 39,
    /// <summary>Get the virtio device status (reply u64; needs STATUS).</summary>
    GetStatus = 40,
    /// <summary>Shared objects.</summary>
    GetSharedObject = 41,
    /// <summary>Device state transfer.</summary>
    SetDeviceStateFd = 42,
    /// <summary>Device state transfer.</summary>
    CheckDeviceState = 43,
    /// <summary>VIRTIO shared memory regions (reply 2056 bytes; needs SHMEM).</summary>
    GetShmemConfig = 44,
}

/// <summary>Requests a backend sends to the frontend on the backend channel (SET_BACKEND_REQ_FD).</summary>
public enum BackendRequest : uint
{
    /// <summary>Not a request.</summary>
    None = 0,
    /// <summary>IOTLB miss or access failure.</summary>
    IotlbMsg = 1,
    /// <summary>Device config space changed (the frontend interrupts the driver).</summary>
    ConfigChangeMsg = 2,
    /// <summary>Host notifier area.</summary>
    VringHostNotifierMsg = 3,
    /// <summary>In-band call.</summary>
    VringCall = 4,
    /// <summary>In-band error.</summary>
    VringErr = 5,
    /// <summary>Shared objects.</summary>
    SharedObjectAdd = 6,
    /// <summary>Shared objects.</summary>
    SharedObjectRemove = 7,
    /// <summary>Shared objects.</summary>
    SharedObjectLookup = 8,
    /// <summary>Map an fd into a VIRTIO shared memory region (one fd, 40-byte payload).</summary>
    ShmemMap = 9,
    /// <summary>Remove a mapping made by <see cref="ShmemMap"/> (40-byte payload).</summary>
    ShmemUnmap = 10,
}

/// <summary>Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES).</summary>
public static class ProtocolFeature
{
    /// <summary>GET_QUEUE_NUM.</summary>
    public const int Mq = 0;
    /// <summary>Dirty log in shared memory.</summary>
    public const int LogShmfd = 1;
    /// <summary>Net RARP.</summary>
    public const int Rarp = 2;
    /// <summary>NEED_REPLY gets a u64 ack for every request.</summary>
    public const int ReplyAck = 3;
    /// <summary>Net MTU.</summary>
    public const int Mtu = 4;
    /// <summary>The backend channel.</summary>
    public const int BackendReq = 5;
    /// <summary>Cross endian.</summary>
    public const int CrossEndian = 6;
    /// <summary>Crypto sessions.</summary>
    public const int CryptoSession = 7;
    /// <summary>Postcopy page faults.</summary>
    public const int Pagefault = 8;
    /// <summary>GET/SET_CONFIG.</summary>
    public const int Config = 9;
    /// <summary>Backend-channel messages may carry fds.</summary>
    public const int BackendSendFd = 10;
    /// <summary>Host notifiers.</summary>
    public const int HostNotifier = 11;
    /// <summary>Inflight tracking.</summary>
    public const int InflightShmfd = 12;
    /// <summary>RESET_DEVICE.</summary>
    public const int ResetDevice = 13;
    /// <summary>In-band notifications.</summary>
    public const int InbandNotifications = 14;
    /// <summary>ADD/REM_MEM_REG and GET_MAX_MEM_SLOTS.</summary>
    public const int ConfigureMemSlots = 15;
    /// <summary>SET/GET_STATUS.</summary>
    public const int Status = 16;
    /// <summary>Xen mmap.</summary>
    public const int XenMmap = 17;
    /// <summary>Shared objects.</summary>
    public const int SharedObject = 18;
    /// <summary>Device state transfer.</summary>
    public const int DeviceState = 19;
    /// <summary>GET_VRING_BASE with inflight.</summary>
    public const int GetVringBaseInflight = 20;
    /// <summary>Ring addresses are guest-physical.</summary>
    public const int GpaAddresses = 21;
    /// <summary>VIRTIO shared memory: GET_SHMEM_CONFIG, SHMEM_MAP/UNMAP (QEMU 11.1 and the spec use 22).</summary>
    public const int Shmem = 22;
}

/// <summary>Fixed numbers of the vhost-user framing.</summary>
public static class VhostUserConstants
{
    /// <summary>Header: u32 request, u32 flags, u32 size.</summary>
    public const int HeaderSize = 12;
    /// <summary>The protocol version carried in flags bits 0-1.</summary>
    public const uint Version = 1;
    /// <summary>Flags bits holding the version.</summary>
    public const uint VersionMask = 0x3;
    /// <summary>Flags bit: this message is a reply.</summary>
    public const uint ReplyFlag = 0x4;
    /// <summary>Flags bit: the sender wants a reply (REPLY_ACK).</summary>
    public const uint NeedReplyFlag = 0x8;
    /// <summary>Flags of every reply: REPLY | version 1 (older frontends reject anything else).</summary>
    public const uint ReplyFlags = ReplyFlag | Version;
    /// <summary>Virtio feature bit VHOST_USER_F_PROTOCOL_FEATURES.</summary>
    public const int ProtocolFeaturesBit = 30;
    /// <summary>Most fds in one message.</summary>
    public const int MaxFds = 8;
    /// <summary>Most regions in SET_MEM_TABLE.</summary>
    public const int MaxMemTableRegions = 8;
    /// <summary>Queue index bits of the SET_VRING_KICK/CALL/ERR u64.</summary>
    public const ulong VringIndexMask = 0xff;
    /// <summary>Bit of the SET_VRING_KICK/CALL/ERR u64 meaning "no fd".</summary>
    public const ulong VringNoFdFlag = 0x100;
    /// <summary>Largest config space a GET/SET_CONFIG moves (QEMU VHOST_USER_MAX_CONFIG_SIZE).</summary>
    public const int MaxConfigSize = 256;
    /// <summary>Entries in GET_SHMEM_CONFIG's memory_sizes array (the shmid is the index).</summary>
    public const int MaxShmemRegions = 256;
    /// <summary>SET_VRING_ADDR flags bit: log used-ring writes.</summary>
    public const uint VringFlagLog = 0x1;
    /// <summary>SHMEM_MAP flags bit: map read-write (otherwise read-only).</summary>
    public const ulong MapFlagReadWrite = 0x1;
}
