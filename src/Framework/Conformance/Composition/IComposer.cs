using Vism.Abstractions;
using Vism.Core;
using Vism.Driver;

namespace Vism.Conformance.Composition;

/// <summary>One row of the matrix: a transport kind, a memory kind and an events kind.</summary>
/// <param name="Transport">The transport kind, e.g. <c>vhost-user</c>.</param>
/// <param name="Memory">The memory kind, e.g. <c>file</c>.</param>
/// <param name="Events">The events kind, e.g. <c>vq</c>; <see cref="NoEvents"/> composes devices without an events plugin.</param>
public sealed record Combination(string Transport, string Memory, string Events)
{
    /// <summary>The <see cref="Events"/> value for devices that offer no event feature.</summary>
    public const string NoEvents = "none";

    /// <summary>Whether the devices get an events plugin.</summary>
    public bool HasEvents => Events != NoEvents;

    /// <summary><c>transport/memory/events</c>.</summary>
    public override string ToString() => $"{Transport}/{Memory}/{Events}";

    /// <summary>Every combination of the given kinds, transport-major.</summary>
    /// <param name="transports">Transport kinds.</param>
    /// <param name="memories">Memory kinds.</param>
    /// <param name="events">Events kinds (may include <see cref="NoEvents"/>).</param>
    /// <returns>The cross product.</returns>
    public static IReadOnlyList<Combination> All(IEnumerable<string> transports, IEnumerable<string> memories, IEnumerable<string> events) =>
        [.. from t in transports from m in memories from e in events select new Combination(t, m, e)];
}

/// <summary>What a check asks a composer to start: one host and its devices, all made of the
/// combination's plugins. Sizes are chosen so that every in-repo memory kind (4 KiB and 2 MiB pages)
/// can back them.</summary>
public sealed record HostSpec
{
    /// <summary>Default <see cref="RegionSize"/>: 2 MiB, a multiple of every page size the in-repo memory kinds use.</summary>
    public const ulong DefaultRegionSize = 2UL << 20;

    /// <summary>Default <see cref="WindowSize"/>: 16 MiB, which holds 7 regions of 2 MiB and their NOTIFY window.</summary>
    public const ulong DefaultWindowSize = 16UL << 20;

    /// <summary>The host's sharing rule.</summary>
    public SharingMode Sharing { get; init; } = SharingMode.Pair;

    /// <summary>How many devices (1 to 8); they are named <c>a</c>, <c>b</c>, <c>c</c>, ...</summary>
    public int Devices { get; init; } = 2;

    /// <summary><c>region-size</c> of every device.</summary>
    public ulong RegionSize { get; init; } = DefaultRegionSize;

    /// <summary><c>window-size</c> (REGIONS + NOTIFY) of every device.</summary>
    public ulong WindowSize { get; init; } = DefaultWindowSize;

    /// <summary><c>notify-size</c> of every device.</summary>
    public ulong NotifySize { get; init; } = 1;

    /// <summary>Bytes each device's memory may hold (the memory plugin's <c>capacity</c> option);
    /// null keeps the plugin's default. A memory kind without that option cannot honour it.</summary>
    public ulong? MemoryCapacity { get; init; }

    /// <summary>Whether regions must outlive the host: the memory plugin's <c>persist</c> option is set
    /// and its <c>directory</c> (when it has one) is put inside the state directory. A memory kind
    /// without a <c>persist</c> option cannot honour it (the check is then not applicable).</summary>
    public bool Persist { get; init; }

    /// <summary>Device names in order; null names them <c>a</c>, <c>b</c>, <c>c</c>, ... Must hold
    /// <see cref="Devices"/> names when given (a check restarting a host with its devices in another order).</summary>
    public IReadOnlyList<string>? Names { get; init; }

    /// <summary>The name of device <paramref name="index"/>.</summary>
    /// <param name="index">0-based.</param>
    /// <returns><see cref="Names"/>[index], or <c>a</c>, <c>b</c>, ...</returns>
    public string DeviceName(int index) => Names is { } names ? names[index] : ((char)('a' + index)).ToString();

    /// <summary>The host's state directory; null gives the composition a fresh one of its own. A
    /// check that restarts "the same host" composes again with the directory it used before (the
    /// check creates it and removes it; the composer never deletes a directory it was given).</summary>
    public string? StateDirectory { get; init; }
}

/// <summary>The seam between the conformance suite and whatever creates plugin instances: the host
/// (<c>vism matrix</c>, plugins loaded from folders, TOML bound as <c>vism run</c> binds it) or
/// <see cref="DirectComposer"/> (plugin objects given in code, for xunit tests).</summary>
public interface IComposer
{
    /// <summary>The installed kinds of <paramref name="kind"/>, sorted.</summary>
    /// <param name="kind">Transport, memory or events.</param>
    /// <returns>Kind names.</returns>
    IReadOnlyList<string> Kinds(PluginKind kind);

    /// <summary>Creates the plugin instances for every device of <paramref name="spec"/> the way the
    /// host does, registers the devices with a new <see cref="IsmHost"/> and starts their transports.</summary>
    /// <param name="combination">The plugins to use.</param>
    /// <param name="spec">The host and its devices.</param>
    /// <param name="cancellation">Cancels the start.</param>
    /// <returns>The running composition; the caller disposes it.</returns>
    /// <exception cref="CompositionUnavailableException">When this machine cannot run the combination
    /// (a plugin's validation refuses it, a kind is not installed or has no driver connector).</exception>
    Task<IComposition> ComposeAsync(Combination combination, HostSpec spec, CancellationToken cancellation);
}

/// <summary>A started host with its devices. Disposing stops the transports, removes the devices
/// and disposes every plugin instance.</summary>
public interface IComposition : IAsyncDisposable
{
    /// <summary>The registry all devices share.</summary>
    IsmHost Host { get; }

    /// <summary>The devices, in <see cref="HostSpec"/> order.</summary>
    IReadOnlyList<ComposedDevice> Devices { get; }
}

/// <summary>One composed device and how a driver reaches it.</summary>
/// <param name="Device">The device model (for the host's view: counters, snapshot).</param>
/// <param name="Connector">The driver side of its transport kind.</param>
/// <param name="Target">What the connector needs.</param>
public sealed record ComposedDevice(IsmDevice Device, IDriverConnector Connector, DriverTarget Target)
{
    /// <summary>The device's name.</summary>
    public string Name => Device.Description.Name;

    /// <summary>Connects a new driver (a VMM and its guest driver) to the device.</summary>
    /// <returns>The connection; the caller disposes it.</returns>
    public IDriverTransport Connect() => Connector.Connect(Target);
}

/// <summary>This machine or installation cannot compose the combination; checks that need it are
/// skipped with <see cref="Exception.Message"/> as the reason and <see cref="Fix"/> as the remedy.</summary>
/// <param name="reason">Why it cannot be composed.</param>
/// <param name="fix">How to make it possible.</param>
public sealed class CompositionUnavailableException(string reason, string fix) : Exception(reason)
{
    /// <summary>True when the combination lacks what was asked for (a check about it is not
    /// applicable) rather than this machine being unable to run it (a skip).</summary>
    public bool NotApplicable { get; init; }

    /// <summary>How to make the combination possible.</summary>
    public string Fix { get; } = fix;
}
