using System.Runtime.InteropServices;

namespace Vism.Native;

/// <summary>
/// The dispositions a process inherits. A shell without job control starts a background job with
/// SIGINT and SIGQUIT ignored, and <c>nohup</c> starts its command with SIGHUP ignored; exec keeps
/// an ignored signal ignored, and .NET keeps it so even when a <see cref="PosixSignalRegistration"/>
/// asks for it (System.Native's "we respect ignored signals"). A daemon whose interface is its
/// signals must take them back before .NET's signal handling starts.
/// </summary>
public static partial class ProcessSignals
{
    /// <summary>SIGHUP, SIGINT and SIGTERM on Linux.</summary>
    public const int SigHup = 1, SigInt = 2, SigTerm = 15;

    private const nint SigDfl = 0, SigIgn = 1;

    /// <summary>Sets each of <paramref name="signals"/> that is ignored now back to its default
    /// action, and leaves every other one as it is (a handler already installed stays). Call it
    /// first thing in <c>Main</c>, before anything touches <see cref="Console"/>, <see cref="System.Diagnostics.Process"/>
    /// or <see cref="PosixSignalRegistration"/>: .NET decides once, when its signal handling starts,
    /// whether it will ever handle SIGINT.</summary>
    /// <param name="signals">Linux signal numbers.</param>
    /// <returns>The signals that were ignored and now have their default action.</returns>
    public static IReadOnlyList<int> Unignore(params int[] signals)
    {
        var restored = new List<int>();
        foreach (int signal in signals)
            if (IsIgnored(signal) && signal_(signal, SigDfl) == SigIgn)
                restored.Add(signal);
        return restored;
    }

    private static unsafe bool IsIgnored(int signal)
    {
        // struct sigaction starts with the handler; the rest (mask, flags) is not looked at.
        byte* old = stackalloc byte[256];
        return sigaction(signal, null, old) == 0 && *(nint*)old == SigIgn;
    }

    [LibraryImport("libc", EntryPoint = "sigaction", SetLastError = true)]
    private static unsafe partial int sigaction(int signal, byte* act, byte* oldact);

    [LibraryImport("libc", EntryPoint = "signal", SetLastError = true)]
    private static partial nint signal_(int signal, nint handler);
}
