using System.Reflection;
using Vism.Abstractions;
using Vism.Driver.Mmio;
using Vism.Driver.VhostUser;

namespace Vism.Driver;

/// <summary>Everything a driver connector may need to reach one served device.</summary>
public sealed record DriverTarget
{
    /// <summary>The transport's <c>kind</c>, e.g. <c>vhost-user</c>.</summary>
    public required string TransportKind { get; init; }

    /// <summary>Where the transport serves the device (<see cref="ITransport.Endpoint"/>: a socket path for the in-repo transports).</summary>
    public required string Endpoint { get; init; }

    /// <summary>The device's layout.</summary>
    public required DeviceDescription Description { get; init; }

    /// <summary>Per-region interrupt vectors the transport offers (<see cref="ITransport.VectorCount"/>).</summary>
    public int VectorCount { get; init; }

    /// <summary>The device itself, for connectors that serve it in this process (the in-memory
    /// transport); null when only the endpoint is known.</summary>
    public IVirtioDevice? Device { get; init; }

    /// <summary>The transport instance serving the device, for connectors of in-process transports
    /// whose driver side lives in the transport object; null when only the endpoint is known.</summary>
    public ITransport? Transport { get; init; }
}

/// <summary>
/// The driver side of one transport kind: given a served device, connect to it as its VMM and guest
/// driver would, and return the connection as an <see cref="IDriverTransport"/>, which the virtio
/// driver and <see cref="IsmClient"/> run on. <c>vism demo</c> and <c>vism matrix</c> use one per
/// transport kind.
/// </summary>
/// <remarks>
/// A third-party transport plugin makes itself drivable by <c>vism matrix</c> and <c>vism demo</c> by
/// shipping a public, non-abstract class with a parameterless constructor implementing this interface
/// in the same assembly as its <see cref="ITransport"/> (and referencing Vism.Driver the way it
/// references Vism.Abstractions: <c>Private=false</c>, <c>ExcludeAssets=runtime</c>; the host shares it).
/// Each connection owns what it creates: disposing the returned transport closes it.
/// </remarks>
public interface IDriverConnector
{
    /// <summary>The transport kind this connector drives, e.g. <c>vhost-user</c>.</summary>
    string TransportKind { get; }

    /// <summary>Connects a new driver to <paramref name="target"/>.</summary>
    /// <param name="target">The served device.</param>
    /// <returns>The connection; the caller disposes it.</returns>
    /// <exception cref="DriverTransportException">When the device cannot be reached.</exception>
    IDriverTransport Connect(DriverTarget target);
}

/// <summary>The connectors for the in-repo transports, and discovery of third-party ones.</summary>
public static class DriverConnectors
{
    /// <summary>The <c>kind</c> of the in-process transport (<see cref="InMemoryTransport"/>); it is no
    /// plugin, so only compositions made in one process (tests) offer it.</summary>
    public const string InMemoryKind = "in-memory";

    /// <summary>Connectors for <c>vhost-user</c>, <c>mmio</c> and <c>in-memory</c>.</summary>
    public static IReadOnlyList<IDriverConnector> BuiltIn { get; } =
        [new VhostUserConnector(), new MmioConnector(), new InMemoryConnector()];

    /// <summary>The connector for <paramref name="transportKind"/>: a public <see cref="IDriverConnector"/>
    /// in <paramref name="pluginAssembly"/> (the assembly of the transport's implementation) first,
    /// then a built-in one.</summary>
    /// <param name="transportKind">The transport kind.</param>
    /// <param name="pluginAssembly">The plugin assembly to search; null searches only the built-in ones.</param>
    /// <returns>The connector, or null when the kind cannot be driven.</returns>
    /// <exception cref="InvalidOperationException">When a connector in the plugin cannot be created.</exception>
    public static IDriverConnector? Find(string transportKind, Assembly? pluginAssembly)
    {
        ArgumentNullException.ThrowIfNull(transportKind);
        if (pluginAssembly is not null && !pluginAssembly.Equals(typeof(DriverConnectors).Assembly))
        {
            foreach (Type type in pluginAssembly.GetExportedTypes())
            {
                if (type is not { IsClass: true, IsAbstract: false } || !typeof(IDriverConnector).IsAssignableFrom(type))
                    continue;
                IDriverConnector connector;
                try
                {
                    connector = (IDriverConnector)Activator.CreateInstance(type)!;
                }
                catch (Exception ex) when (ex is MissingMethodException or TargetInvocationException or MemberAccessException)
                {
                    throw new InvalidOperationException(
                        $"driver connector {type.FullName} in {pluginAssembly.GetName().Name} cannot be created: {(ex.InnerException ?? ex).Message}", ex);
                }
                if (connector.TransportKind == transportKind)
                    return connector;
            }
        }
        return BuiltIn.FirstOrDefault(c => c.TransportKind == transportKind);
    }

    /// <summary>What QEMU's <c>vhost-user-test-device-pci</c> does, with guest RAM the connection owns.</summary>
    private sealed class VhostUserConnector : IDriverConnector
    {
        public string TransportKind => "vhost-user";

        public IDriverTransport Connect(DriverTarget target) =>
            OwningRam.Wrap(new GuestRam(), ram => VhostUserFrontend.Connect(target.Endpoint, ram,
                new VhostUserFrontendOptions { DeviceId = target.Description.VirtioId, VectorCount = target.VectorCount }));
    }

    /// <summary>A VMM speaking the MMIO socket protocol (docs/mmio-protocol.md); it owns its RAM.</summary>
    private sealed class MmioConnector : IDriverConnector
    {
        public string TransportKind => "mmio";

        public IDriverTransport Connect(DriverTarget target) => MmioVmmClient.Connect(target.Endpoint);
    }

    /// <summary>Serves the device in this process; each connection is a new <see cref="InMemoryTransport"/>.</summary>
    private sealed class InMemoryConnector : IDriverConnector
    {
        public string TransportKind => InMemoryKind;

        public IDriverTransport Connect(DriverTarget target) =>
            InMemoryTransport.StartFor(target.Device ?? throw new DriverTransportException("the in-memory transport needs the device in this process"),
                vectorCount: target.VectorCount);
    }

    /// <summary>A driver transport that also owns the guest RAM it was given, and frees it last.</summary>
    private sealed class OwningRam(IDriverTransport inner, GuestRam ram) : IDriverTransport
    {
        public static IDriverTransport Wrap(GuestRam ram, Func<GuestRam, IDriverTransport> connect)
        {
            try
            {
                return new OwningRam(connect(ram), ram);
            }
            catch
            {
                ram.Dispose();
                throw;
            }
        }

        public GuestRam Ram => inner.Ram;
        public uint DeviceId => inner.DeviceId;
        public int VectorCount => inner.VectorCount;
        public ulong ReadDeviceFeatures() => inner.ReadDeviceFeatures();
        public void WriteDriverFeatures(ulong features) => inner.WriteDriverFeatures(features);
        public DeviceStatus ReadStatus() => inner.ReadStatus();
        public void WriteStatus(DeviceStatus status) => inner.WriteStatus(status);
        public void ReadConfig(uint offset, Span<byte> destination) => inner.ReadConfig(offset, destination);
        public uint ReadConfigGeneration() => inner.ReadConfigGeneration();
        public ushort MaxQueueSize(int index) => inner.MaxQueueSize(index);
        public void StartQueue(int index, QueueSettings settings) => inner.StartQueue(index, settings);
        public void Kick(int index) => inner.Kick(index);
        public bool WaitQueue(int index, TimeSpan timeout) => inner.WaitQueue(index, timeout);
        public ulong ShmLength(ShmId id) => inner.ShmLength(id);
        public nint ShmAddress(ShmId id) => inner.ShmAddress(id);
        public void WriteNotify(ulong offset, byte value = 1) => inner.WriteNotify(offset, value);
        public bool WaitVector(int vector, TimeSpan timeout) => inner.WaitVector(vector, timeout);
        public void Notify(ulong offset) => inner.Notify(offset);
        public bool WaitQueue(int index, TimeSpan timeout, TimeSpan spin) => inner.WaitQueue(index, timeout, spin);
        public bool WaitVector(int vector, TimeSpan timeout, TimeSpan spin) => inner.WaitVector(vector, timeout, spin);

        public void Dispose()
        {
            inner.Dispose();
            ram.Dispose();
        }
    }
}
