using Vism.Driver;

namespace Vism.Host.Composition;

/// <summary>
/// The driver side of each in-repo transport, for <c>vism demo</c>: given a running device, connect
/// to its endpoint as its VMM and guest driver would. One small factory per transport kind.
/// </summary>
public static class DriverConnectors
{
    private static readonly Dictionary<string, Func<RunningDevice, IDriverTransport>> Factories = new(StringComparer.Ordinal)
    {
    };

    /// <summary>Adds or replaces the driver side of <paramref name="kind"/> (tests add their in-process transport).</summary>
    internal static void Register(string kind, Func<RunningDevice, IDriverTransport> connect)
    {
        lock (Factories) Factories[kind] = connect;
    }

    /// <summary>The transport kinds the demo can drive.</summary>
    public static IEnumerable<string> Kinds => Factories.Keys.Order(StringComparer.Ordinal);

    /// <summary>Whether the demo can drive <paramref name="kind"/>.</summary>
    public static bool Supports(string kind) => Factories.ContainsKey(kind);

    /// <summary>Connects to <paramref name="device"/>'s endpoint through its transport's driver side.</summary>
    public static IDriverTransport Connect(RunningDevice device) =>
        Factories[device.Settings.Transport.Registration.Name](device);
}
